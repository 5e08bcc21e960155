"""The denoising training loss: noise the data at a random time, regress the parameterisation's target."""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from lumiere_jax.diffusion.parameterization import training_target
from lumiere_jax.diffusion.schedule import CosineSchedule, alpha_sigma, diffuse, per_example

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]  # (z, logsnr (B,)) -> output shaped like z


class NoisedBatch(NamedTuple):
    z: jax.Array  # alpha x0 + sigma eps, float32, shaped like x0
    eps: jax.Array  # the standard-normal noise that was added
    logsnr: jax.Array  # (B,) noise level of each example


def sample_times(rng: jax.Array, batch: int, low_discrepancy: bool = True) -> jax.Array:
    """t in [0, 1) for each of `batch` examples; every t is marginally U(0, 1).

    low_discrepancy (Kingma et al. 2021, "Variational Diffusion Models"): one uniform offset u and
    t_i = (u + i / batch) mod 1, so a batch always covers the whole noise range evenly. The loss
    stays unbiased and its variance across steps drops, which matters for per-band loss logging
    with small per-device batches. False draws the times independently.
    """
    if low_discrepancy:
        offset = jax.random.uniform(rng, ())
        return jnp.mod(offset + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
    return jax.random.uniform(rng, (batch,))


def noise_batch(rng: jax.Array, x0: jax.Array, schedule: CosineSchedule, low_discrepancy: bool = True) -> NoisedBatch:
    """Draws t and eps per example and returns the noised batch; deterministic in `rng`.

    Exposed so a caller (or a test) can reproduce exactly what `diffusion_loss` fed the model.
    """
    t_rng, eps_rng = jax.random.split(rng)
    logsnr = schedule.logsnr(sample_times(t_rng, x0.shape[0], low_discrepancy))
    eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
    return NoisedBatch(z=diffuse(x0.astype(jnp.float32), eps, logsnr), eps=eps, logsnr=logsnr)


def diffusion_loss(
    model_fn: ModelFn,
    x0: jax.Array,
    rng: jax.Array,
    schedule: CosineSchedule,
    *,
    parameterization: str,
    low_discrepancy: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Per-example MSE (B,) between model_fn(z, logsnr) and the target, and the logsnr (B,) used.

    x0 may be a batch of images or videos (any rank >= 1, batch first). The MSE is averaged over
    all non-batch axes in float32; the trainer reduces over the batch and bins by logsnr.
    """
    noised = noise_batch(rng, x0, schedule, low_discrepancy)
    alpha, sigma = alpha_sigma(per_example(noised.logsnr, x0))
    target = training_target(x0.astype(jnp.float32), noised.eps, alpha, sigma, parameterization)
    output = model_fn(noised.z, noised.logsnr)
    if output.shape != x0.shape:
        raise ValueError(f"model_fn returned shape {output.shape}; it must match the data shape {x0.shape}")
    error = jnp.square(output.astype(jnp.float32) - target)
    return jnp.mean(error, axis=tuple(range(1, x0.ndim))), noised.logsnr
