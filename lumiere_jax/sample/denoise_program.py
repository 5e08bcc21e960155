"""One guided denoising step of a sampling stage with abstract arguments, for ahead-of-time compiles.

A sampler runs this program `sample.num_steps` times per batch of clips, so its compiled memory and
cost are the paper-scale cost of sampling (`--mode=compile_report --config.compile.program=
denoise_step`). It is the sampling job's own step (`generate.clip_model_fn`, classifier-free guidance
with the conditional and unconditional rows in one model call, dynamic thresholding), built from a
config alone: the base STUNet on the whole clip (on one window with sample.window_aggregation='extend',
which samples the windows one after another), or the SSR model on its temporal windows
(MultiDiffusion) over a clip of `sample.num_frames` frames. No weight is ever allocated.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lumiere_jax import diffusion
from lumiere_jax.diffusion.multidiffusion import window_count
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import UNet, UNetConfig
from lumiere_jax.parallel import abstract_sharded, batch_shard_count, batch_sharding, state_shardings
from lumiere_jax.sample.generate import clip_model_fn, null_of


@dataclasses.dataclass(frozen=True)
class DenoiseProgram:
    """fn(state, z, logsnr, cond) -> x0 and its abstract, sharded arguments."""

    fn: Callable
    args: tuple  # (state, z, logsnr, cond) as ShapeDtypeStructs with shardings
    in_shardings: tuple
    frames: int  # frames of the clip the step denoises
    windows: int  # model windows per clip (1: the whole clip at once)
    rows_per_step: int  # clips x windows x guidance branches: the model's rows in one step
    rows_per_call: int  # the model's batch in one call (windows_in_sequence: one window's rows)
    passes: int = 1  # sampling runs per clip, one after another (extend: one per window of the tiling)


def stage_geometry(config) -> tuple[int, int, int, int]:
    """(clip frames, window frames, overlap, frame size) of the stage `config` samples."""
    frames = config.sample.num_frames or config.data.num_frames
    window = config.ssr.window if config.ssr.enabled else config.data.num_frames
    if frames < window:
        raise ValueError(f"sample.num_frames={frames} is shorter than the model's {window}-frame window")
    if config.ssr.enabled:
        return frames, window, config.ssr.overlap, config.data.hires_resolution
    return frames, window, config.sample.window_overlap, config.data.resolution


def check_batch(batch_size: int, mesh, rules) -> int:
    shards = batch_shard_count(mesh, rules)
    if batch_size < 1 or batch_size % shards:
        raise ValueError(f"sample.batch_size={batch_size} must be a positive multiple of {shards} (the mesh's batch "
                         f"shards {dict(mesh.shape)}) for a denoise_step compile report")
    return batch_size


def denoise_program(config, mesh, rules, batch_size: int) -> DenoiseProgram:
    """The guided denoising step `--mode=sample` would run for `config`'s model, `batch_size` clips."""
    batch_size = check_batch(batch_size, mesh, rules)
    frames, window, overlap, size = stage_geometry(config)
    model = nnx.eval_shape(lambda: UNet(UNetConfig.from_config(config.model), rngs=Rngs(0)))
    graphdef, state = nnx.split(model)
    settings = diffusion.sampler_settings_from_config(config.sample)
    parameterization = diffusion.parameterization_from_config(config.diffusion)
    aggregation = "average" if config.ssr.enabled else config.sample.window_aggregation
    passes = 1
    if aggregation == "extend":  # windows sampled one after another: a step denoises one window
        frames, passes = window, window_count(frames, window, overlap, aggregation)
    windows = window_count(frames, window, overlap, aggregation)

    def constrain(x):
        return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, rules, x.ndim))

    def fn(state, z, logsnr, cond):
        model_fn = clip_model_fn(nnx.merge(graphdef, state), frames, window, overlap, constrain,
                                 windows_in_sequence=config.sample.windows_in_sequence, aggregation=aggregation)
        predict = diffusion.classifier_free_guidance(model_fn, cond, null_of(cond), settings.guidance_scale)
        x0, _ = diffusion.denoise(predict, z, logsnr, parameterization, settings.threshold_percentile,
                                  settings.threshold_max)
        return x0

    text, b = config.text, batch_size
    cond = {"text": jax.ShapeDtypeStruct((b, text.max_length, config.model.text_dim), jnp.float32),
            "mask": jax.ShapeDtypeStruct((b, text.max_length), jnp.bool_)}
    if config.ssr.enabled:
        cond["lowres"] = jax.ShapeDtypeStruct((b, frames, size, size, config.model.conditioning_channels), jnp.float32)
        cond["aug"] = jax.ShapeDtypeStruct((b,), jnp.float32)
    z = jax.ShapeDtypeStruct((b, frames, size, size, config.model.in_channels), jnp.float32)
    shardings = (state_shardings(state, mesh, rules), batch_sharding(mesh, rules, z.ndim), None,
                 {k: batch_sharding(mesh, rules, len(v.shape)) for k, v in cond.items()})
    args = (abstract_sharded(state, shardings[0]), abstract_sharded(z, shardings[1]),
            jax.ShapeDtypeStruct((), jnp.float32), abstract_sharded(cond, shardings[3]))
    rows = b * windows * diffusion.guidance_branches(settings.guidance_scale)
    return DenoiseProgram(fn, args, shardings, frames, windows, rows,
                          rows // windows if config.sample.windows_in_sequence else rows, passes)
