"""One training step as a pure function of (train state, batch): the program that gets jitted.

It computes the diffusion loss of the trainable parameters only (frozen ones get no gradient and
no optimizer state), accumulates gradients over micro-batches, and applies the update only when
the loss and gradient norm are finite; a skipped update is counted, never silently applied.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lumiere_jax import diffusion
from lumiere_jax.models.conditioning import call_model, upsample
from lumiere_jax.models.unet import training_frame_starts
from lumiere_jax.sample.masks import KNOWN_CHANNELS
from lumiere_jax.text.conditioning import text_conditioning
from lumiere_jax.text.conventions import encodes_null_prompt, null_conditioning, unet_mask
from lumiere_jax.text.encoder import check_encoder_width
from lumiere_jax.train.mask_mix import draw_conditions, mix_probabilities
from lumiere_jax.train.state import TrainState

NUM_BANDS = 4  # loss is also reported per quarter of (unshifted cosine) noise time
FRAME_START_STREAM = 5  # fold_in of the step's key for the frame starts: the other draws stay what they were
STEP_KEYS = ("video", "video_hires", "text_embeddings", "text_mask", "text_tokens", "is_image")


def noise_band(logsnr: jax.Array) -> jax.Array:
    """Band index 0 (least noise) .. NUM_BANDS-1 (most), from the unshifted cosine time of logsnr."""
    t = (2.0 / math.pi) * jnp.arctan(jnp.exp(-0.5 * logsnr))
    return jnp.clip(jnp.floor(t * NUM_BANDS), 0, NUM_BANDS - 1).astype(jnp.int32)


def step_inputs(batch: dict, config) -> dict:
    """The array fields of a pipeline batch that the jitted step consumes.

    `is_image` is kept only when sources are mixed within a batch (`data.mix_by='example'`), where
    the step must pick per row; whole-source batches are told apart on the host (`image_batch`)
    and run a step compiled for image mode, so video batches pay nothing for joint training.
    """
    keys = [k for k in STEP_KEYS if k in batch]
    if config.data.get("mix_by", "batch") != "example":
        keys = [k for k in keys if k != "is_image"]
    return {k: batch[k] for k in keys}


def check_conditioning_channels(config) -> bool:
    """True for a conditional-task model (its batches get a random ⟨C, M⟩); errors on a channel count
    that neither SSR nor the conditional tasks use."""
    channels = config.model.conditioning_channels
    if config.ssr.enabled or channels == 0:
        return False
    if channels != KNOWN_CHANNELS:
        raise ValueError(f"model.conditioning_channels={channels}: use {KNOWN_CHANNELS} for the conditional tasks "
                         "(masked clip + mask), 3 with ssr.enabled, or 0")
    mix_probabilities(config.train.masks)
    return True


def _split_microbatches(batch: dict, n: int) -> dict:
    size = next(iter(batch.values())).shape[0]
    if size % n:
        raise ValueError(f"batch size {size} is not divisible by train.microbatches={n}")
    return jax.tree.map(lambda a: a.reshape(n, size // n, *a.shape[1:]), batch)


def make_train_step(graphdef: nnx.GraphDef, config, schedule_fn: optax.Schedule, image_mode: bool = False,
                    null_text: Optional[jax.Array] = None) -> Callable:
    """Returns step(state, batch, encoder_state) -> (state, metrics), pure and jittable.

    `image_mode` compiles the step for batches of images (every temporal module bypassed).
    `null_text` (L, D) is the encoded empty prompt that text dropout substitutes under
    `config.text.conventions='deepfloyd_if'` (`text.conventions.encode_null_prompt`); None: no tokens.
    `encoder_state` is the frozen text encoder's (graphdef, state) when `config.text.encode_in_step`,
    else None; it is an argument rather than a closure so its weights are not baked in as constants.
    """
    schedule = diffusion.schedule_from_config(config.diffusion)
    parameterization = diffusion.parameterization_from_config(config.diffusion)
    train = config.train
    if not 0.0 <= train.text_dropout <= 1.0:
        raise ValueError(f"train.text_dropout={train.text_dropout} must be in [0, 1]")
    if train.microbatches < 1:
        raise ValueError(f"train.microbatches={train.microbatches} must be >= 1")
    conditional = check_conditioning_channels(config)
    if encodes_null_prompt(config.text) != (null_text is not None):
        raise ValueError(f"config.text.conventions={config.text.conventions!r}: the null prompt is "
                         + ("T5(''), pass it as null_text" if null_text is None else "no tokens, pass null_text=None"))
    if config.text.encode_in_step:
        check_encoder_width(config.text, config.model.text_dim)

    def micro_loss(params, rest, model_graphdef, batch, rng, encoder):
        model = nnx.merge(model_graphdef, params, rest)
        text, mask = text_conditioning(batch, config.text, encoder)
        drop_rng, loss_rng, aug_rng, mask_rng = jax.random.split(rng, 4)
        cond = {"text": text, "mask": unet_mask(mask, config.text)}
        cond = diffusion.drop_conditioning(drop_rng, cond, null_conditioning(cond, null_text), train.text_dropout)
        x0 = batch["video"]
        if config.ssr.enabled:  # (low-res, high-res) pairs made on the fly, low-res noise-augmented
            x0 = batch["video_hires"]
            lowres = upsample(batch["video"], x0.shape[2], config.model.lowres_align_corners)
            aug_range = (config.ssr.aug_logsnr_min, config.ssr.aug_logsnr_max)
            cond["lowres"], cond["aug"] = diffusion.random_noise_augment(aug_rng, lowres, aug_range)
        elif conditional:  # Lumiere's conditional tasks: a random known-pixel mask per example
            x0, cond["known"] = draw_conditions(mask_rng, x0, train.masks)

        starts = training_frame_starts(model.cfg, jax.random.fold_in(rng, FRAME_START_STREAM), *x0.shape[:2])
        if starts is not None and not image_mode:  # frame_position='global': a window of a longer clip
            cond["frame_start"] = starts

        def model_fn(z, logsnr):
            out = call_model(model, z, logsnr, cond, image_mode=image_mode)
            if "is_image" in batch:  # sources mixed within the batch: image rows run with time bypassed
                image_out = call_model(model, z, logsnr, cond, image_mode=True)
                pick = batch["is_image"].astype(bool).reshape((-1,) + (1,) * (out.ndim - 1))
                out = jnp.where(pick, image_out, out)
            return out

        losses, logsnr = diffusion.diffusion_loss(model_fn, x0, loss_rng, schedule, parameterization=parameterization)
        return losses.mean(), (losses, logsnr)

    def gradients(model, wrt, batch, rng, encoder):
        """Mean loss, per-example losses and logsnr, and gradients of the `wrt` parameters."""
        model_graphdef, params, rest = nnx.split(model, wrt, ...)
        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
        if train.microbatches == 1:
            (loss, (losses, logsnr)), grads = grad_fn(params, rest, model_graphdef, batch, rng, encoder)
            return loss, losses, logsnr, grads
        micro = _split_microbatches(batch, train.microbatches)
        rngs = jax.random.split(rng, train.microbatches)

        def body(acc, xs):
            mb, r = xs
            (loss, (losses, logsnr)), grads = grad_fn(params, rest, model_graphdef, mb, r, encoder)
            return jax.tree.map(jnp.add, acc, grads), (loss, losses, logsnr)

        zero = jax.tree.map(jnp.zeros_like, params)
        grads, (loss, losses, logsnr) = jax.lax.scan(body, zero, (micro, rngs))
        scale = 1.0 / train.microbatches
        return loss.mean(), losses.reshape(-1), logsnr.reshape(-1), jax.tree.map(lambda g: g * scale, grads)

    def step(state: nnx.State, batch: dict, encoder_state: Optional[tuple] = None):
        ts: TrainState = nnx.merge(graphdef, state)
        encoder = nnx.merge(*encoder_state) if encoder_state is not None else None
        rng = jax.random.fold_in(jax.random.key(config.seed), ts.step[...])
        loss, losses, logsnr, grads = gradients(ts.model, ts.wrt, batch, rng, encoder)
        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply(s, g):
            t: TrainState = nnx.merge(graphdef, s)
            t.optimizer.update(t.model, g)
            t.update_ema(train.ema_decay)
            return nnx.state(t)

        state = jax.lax.cond(ok, apply, lambda s, g: s, nnx.state(ts), grads)
        ts = nnx.merge(graphdef, state)
        ts.step[...] += 1
        ts.nonfinite_streak[...] = jnp.where(ok, 0, ts.nonfinite_streak[...] + 1)
        ts.nonfinite_total[...] += jnp.where(ok, 0, 1)
        bands = jax.nn.one_hot(noise_band(logsnr), NUM_BANDS)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": schedule_fn(ts.optimizer.step[...]),
            "update_applied": ok,
            "nonfinite_streak": ts.nonfinite_streak[...],
            "nonfinite_total": ts.nonfinite_total[...],
            "band_loss_sum": (bands * losses[:, None]).sum(0),
            "band_count": bands.sum(0),
        }
        return nnx.state(ts), metrics

    return step
