"""Noise conditioning augmentation for super-resolution inputs (Ho et al. 2021, Imagen).

The SSR model is conditioned on a low-resolution clip. In training that clip is a clean
downsample; at sampling it comes from the base model, with artefacts. Noising the conditioning
input at a known level, and telling the model that level, trains the SSR model to be robust to
those differences: training draws the level per example from a range, sampling uses one fixed
level. The same forward process as the main diffusion is used (z = alpha x + sigma eps).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lumiere_jax.diffusion.schedule import diffuse


def noise_augment(rng: jax.Array, x: jax.Array, logsnr) -> tuple[jax.Array, jax.Array]:
    """Noises `x` at `logsnr` (scalar or (B,)); returns (alpha x + sigma eps, logsnr as (B,)).

    Use at sampling time with a fixed level; the returned (B,) logsnr is what the model is
    conditioned on, in the same form as in training.
    """
    logsnr = jnp.broadcast_to(jnp.asarray(logsnr, jnp.float32), (x.shape[0],))
    eps = jax.random.normal(rng, x.shape, jnp.float32)
    return diffuse(x.astype(jnp.float32), eps, logsnr), logsnr


def random_noise_augment(
    rng: jax.Array, x: jax.Array, logsnr_range: tuple[float, float]
) -> tuple[jax.Array, jax.Array]:
    """Training-time augmentation: logsnr ~ U(low, high) per example, then `noise_augment`.

    The level is drawn uniformly in logsnr (not in t) so the range reads directly as "how much
    noise", independent of the main schedule. Pass a large `high` (e.g. 20) so some examples are
    almost clean.
    """
    low, high = logsnr_range
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"augmentation logsnr_range={logsnr_range!r} must be finite (low, high) with low < high")
    level_rng, noise_rng = jax.random.split(rng)
    logsnr = jax.random.uniform(level_rng, (x.shape[0],), minval=low, maxval=high)
    return noise_augment(noise_rng, x, logsnr)
