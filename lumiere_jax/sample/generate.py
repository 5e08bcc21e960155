"""Video generation with a trained model: guidance, MultiDiffusion windows, sampler, schedule.

One pure, jittable function serves the trainer's previews, the base (text-to-video) stage and the
SSR stage of the sampling job. Conditioning is a dict: `text` (B, L, D) and `mask` (B, L) always;
SSR adds `lowres` (B, T, H, W, 3), the upsampled low-resolution clip, and `aug` (B,), the
log-SNR of the augmentation noise it carries; the conditional tasks add `known` (B, T, H, W, 4).
Guidance nulls the text only, or contrasts it with a negative prompt's.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from lumiere_jax import diffusion
from lumiere_jax.diffusion.multidiffusion import check_aggregation, check_window_layout, extend_windows, multidiffusion
from lumiere_jax.models.conditioning import FRAME_KEYS, call_model
from lumiere_jax.sample.masks import split_known


LAYOUT_NAMES = ("sample.num_frames", "sample.window_overlap")


def check_long_clip(cfg, num_frames: int, window: int, overlap: int, aggregation: str = "average",
                    names: tuple[str, str] = LAYOUT_NAMES) -> None:
    """Errors for a clip longer than `window` that this model (a UNetConfig) cannot sample in windows,
    or a window layout that does not cover it; nothing for a clip that fits one window."""
    check_aggregation(aggregation)
    if num_frames <= window:
        return
    if not cfg.windows_share_positions:
        raise ValueError(
            f"{names[0]}={num_frames} is longer than the model's {window}-frame window, and its frame embedding "
            "(model.temporal.frame_embedding) counts each frame from its window's start "
            "(model.temporal.frame_position='clip'): overlapping windows would tell a frame different places, "
            f"disagree, and leave jumps at their boundaries. Sample {window} frames, or sample.image_mode=True "
            "(frame-wise), or use a checkpoint trained with model.temporal.frame_position='global' and "
            f"model.temporal.max_clip_frames >= {num_frames} on clips of any length (configs/demo_long.py)")
    longest = cfg.longest_clip
    if longest is not None and num_frames > max(longest, window):
        raise ValueError(
            f"{names[0]}={num_frames}: this model learnt frame positions for clips of up to {max(longest, window)} "
            f"frames (model.temporal.max_clip_frames={longest}); sample at most that many, or train with "
            f"model.temporal.max_clip_frames >= {num_frames}")
    check_window_layout(num_frames, window, overlap, cfg.window_grid, names)
    if aggregation == "independent":
        check_window_layout(num_frames, window, 0, cfg.window_grid, names)


def clip_model_fn(model, num_frames: int, window: Optional[int], overlap: int,
                  constrain: Optional[Callable] = None, image_mode: bool = False,
                  windows_in_sequence: bool = False, aggregation: str = "average") -> Callable:
    """fn(z, logsnr, cond) over a whole clip: directly, or with temporal MultiDiffusion when the
    model's window is shorter than the clip (`windows_in_sequence`: one window per model call;
    `aggregation`: how the windows are put together, multidiffusion.AGGREGATIONS). A model whose
    frame embedding counts from the long clip's start (model.temporal.frame_position='global') is
    told each window's first frame. `image_mode` bypasses the temporal modules, so every frame is
    denoised on its own (no windows needed)."""
    if image_mode or window is None or window >= num_frames:
        return lambda z, logsnr, cond: call_model(model, z, logsnr, cond, image_mode=image_mode)
    cfg = model.cfg
    check_long_clip(cfg, num_frames, window, overlap, aggregation)

    def window_fn(z, logsnr, frame_cond, example_cond):
        return call_model(model, z, logsnr, {**frame_cond, **example_cond})

    clip_fn = multidiffusion(window_fn, num_frames, window, overlap, constrain, windows_in_sequence, aggregation,
                             cfg.window_grid, start_key="frame_start" if cfg.frame_positions == "global" else None)

    def fn(z, logsnr, cond):
        frame = {k: v for k, v in cond.items() if k in FRAME_KEYS}
        example = {k: v for k, v in cond.items() if k not in FRAME_KEYS}
        return clip_fn(z, logsnr, frame, example)

    return fn


def null_of(cond: dict) -> dict:
    """The unconditional branch of guidance: no text tokens, everything else kept."""
    return dict(cond, text=jnp.zeros_like(cond["text"]), mask=jnp.zeros_like(cond["mask"]))


def generate(model, cond: dict, noise: jax.Array, rng: jax.Array, config, *, num_steps: Optional[int] = None,
             window: Optional[int] = None, overlap: int = 2, aggregation: str = "average",
             constrain: Optional[Callable] = None,
             image_mode: bool = False, known: Optional[jax.Array] = None, replacement: bool = False,
             init: Optional[jax.Array] = None, strength: float = 1.0,
             negative: Optional[dict] = None) -> jax.Array:
    """Samples clips shaped like `noise` (B, T, H, W, C) in [-1, 1] with config.sample settings;
    `image_mode` generates every frame independently (temporal modules bypassed). A clip longer
    than `window` is sampled in windows (`overlap`, `aggregation`: `clip_model_fn`).

    `known` (B, T, H, W, 4) = ⟨C, M⟩ (`lumiere_jax.sample.masks.known_input`) conditions a
    conditional-task model through its extra channels (windowed with the clip), or with
    `replacement` a text-to-video model through the replacement method (the known pixels re-noised
    and pasted in before every step). Either way the known pixels are pasted into the result, so
    they equal the input exactly.

    `init` (shaped like `noise`) is a clip to edit (SDEdit): it is diffused with `noise` to the grid
    point of `strength` (`diffusion.sdedit_steps`) and denoised from there with the prompt.

    `negative` ({"text", "mask"} shaped like cond's) is a negative prompt: guidance's unconditional
    branch reads it instead of no text, so the sample moves away from it (rows without one are zero,
    which is the null text). For an edit, the input's own caption: the guided difference is then
    what the two prompts do not share.
    """
    if aggregation == "extend" and not image_mode and window is not None and window < noise.shape[1]:
        if known is not None or init is not None:
            raise ValueError("sample.window_aggregation='extend' makes text-to-video clips; a task with known "
                             "pixels or an input clip (i2v, inpaint, outpaint, cinemagraph, edit) samples long "
                             "clips with 'average'")
        return extend_clip(model, cond, noise, rng, config, num_steps=num_steps, window=window, overlap=overlap,
                           negative=negative)
    schedule = diffusion.schedule_from_config(config.diffusion)
    parameterization = diffusion.parameterization_from_config(config.diffusion)
    settings = diffusion.sampler_settings_from_config(config.sample)
    if num_steps is not None:
        settings = dataclasses.replace(settings, num_steps=num_steps)
    t_start = 1.0
    if init is not None:
        steps = diffusion.sdedit_steps(strength, settings.num_steps)
        if steps == 0:
            return jnp.clip(init, -1.0, 1.0)
        if steps < settings.num_steps:
            t_start = steps / settings.num_steps
            noise = diffusion.diffuse(init.astype(jnp.float32), noise, schedule.logsnr(t_start))
        settings = dataclasses.replace(settings, num_steps=steps)
    replace = None
    if known is not None:
        values, mask = split_known(known)
        if replacement:
            replace = (values, mask[..., None])
        else:
            cond = dict(cond, known=known)
    model_fn = clip_model_fn(model, noise.shape[1], window, overlap, constrain, image_mode,
                             config.sample.get("windows_in_sequence", False), aggregation)
    uncond = null_of(cond) if negative is None else dict(cond, **negative)
    predict = diffusion.classifier_free_guidance(model_fn, cond, uncond, settings.guidance_scale)
    video = jnp.clip(diffusion.sample(predict, noise, rng, schedule, settings, parameterization=parameterization,
                                      t_start=t_start, known=replace), -1.0, 1.0)
    return video if known is None else paste_known(video, known)


def extend_clip(model, cond: dict, noise: jax.Array, rng: jax.Array, config, *, window: int, overlap: int,
                num_steps: Optional[int] = None, negative: Optional[dict] = None) -> jax.Array:
    """A clip longer than the model's `window`, its windows sampled one after another (aggregation
    'extend', `multidiffusion.extend_windows`): each with the frames made before it known, pasted in
    by the replacement method, so only its new frames are generated and they continue the clip. A
    model whose frame positions count from the long clip is told each window's first frame."""
    check_long_clip(model.cfg, noise.shape[1], window, overlap, "extend")
    batch = noise.shape[0]

    def sample_window(window_noise, known, start, index):
        values, mask = known
        window_cond = cond
        if model.cfg.frame_positions == "global":
            window_cond = dict(cond, frame_start=jnp.full((batch,), start, jnp.int32))
        known_input = jnp.concatenate([values, jnp.broadcast_to(mask, values.shape[:-1] + (1,))], axis=-1)
        return generate(model, window_cond, window_noise, jax.random.fold_in(rng, index), config, num_steps=num_steps,
                        window=window, known=known_input, replacement=True, negative=negative)

    return extend_windows(sample_window, noise, window, overlap)


def paste_known(video: jax.Array, known: jax.Array) -> jax.Array:
    """The clip with its known pixels (⟨C, M⟩, M = 1) set to the input's values."""
    values, mask = split_known(known)
    return jnp.where(mask[..., None] > 0.5, values, video)
