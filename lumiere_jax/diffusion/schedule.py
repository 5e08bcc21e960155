"""Continuous-time cosine log-SNR schedule of the variance-preserving (VP) diffusion process.

Time t runs from 0 (data) to 1 (noise). The process is z_t = alpha_t x0 + sigma_t eps with
alpha^2 = sigmoid(logsnr) and sigma^2 = sigmoid(-logsnr), so alpha^2 + sigma^2 = 1 and
logsnr = log(alpha^2 / sigma^2). Everything downstream (losses, samplers, augmentation) is written
in terms of logsnr, which is why this module is the only one that knows about t.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
    """logsnr(t) = -2 log tan(a + t (b - a)) - 2 log(shift): the Imagen-family cosine schedule in log-SNR form.

    a and b are chosen so that, before the shift, logsnr(0) = logsnr_max and logsnr(1) = logsnr_min:
    the endpoints stay finite, so the model is never asked about pure data or pure noise.
    `shift` is the "simple diffusion" resolution shift (resolution / 64 for pixel diffusion above
    64x64): higher resolutions need more noise for the same perceptual destruction. It moves the
    whole curve, endpoints included, by -2 log(shift); shift = 1 is the plain cosine schedule.

    Frozen (hashable), so it can be a static argument of `jax.jit`.
    """

    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    shift: float = 1.0

    def __post_init__(self):
        for key in ("logsnr_min", "logsnr_max", "shift"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"diffusion.{key}={value!r} must be a finite number")
        if self.logsnr_min >= self.logsnr_max:
            raise ValueError(
                f"diffusion.logsnr_min={self.logsnr_min} must be smaller than diffusion.logsnr_max="
                f"{self.logsnr_max} (logsnr decreases from logsnr_max at t=0 to logsnr_min at t=1)"
            )
        if self.shift <= 0:
            raise ValueError(f"diffusion.shift={self.shift} must be > 0 (1.0 = no shift, resolution/64 = shifted)")

    def logsnr(self, t: jax.Array) -> jax.Array:
        """log-SNR at times t in [0, 1] (any shape), float32.

        Evaluated as -2 log tan(u) where the angle u = a + t (b - a) is small and as
        +2 log tan(pi/2 - u) where it is close to pi/2: pi/2 - u is computed directly from
        atan(exp(logsnr_min / 2)), so neither endpoint loses precision to float32 rounding of a
        number near pi/2 (the naive form is ~3e-3 off at logsnr_min = -20).
        """
        a = math.atan(math.exp(-0.5 * self.logsnr_max))  # angle at t = 0
        c = math.atan(math.exp(0.5 * self.logsnr_min))  # pi/2 - angle at t = 1
        span = 0.5 * math.pi - a - c
        t = jnp.asarray(t, jnp.float32)
        angle = a + t * span
        complement = c + (1.0 - t) * span
        logsnr = jnp.where(
            angle <= complement, -2.0 * jnp.log(jnp.tan(angle)), 2.0 * jnp.log(jnp.tan(complement))
        )
        return logsnr - 2.0 * math.log(self.shift)


def alpha_sigma(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha, sigma) = (sqrt(sigmoid(logsnr)), sqrt(sigmoid(-logsnr))), elementwise, float32.

    Computed as exp(log_sigmoid / 2): no 1 - x cancellation, so sigma stays accurate (not 0) at
    logsnr = +20 and alpha at logsnr = -20.
    """
    logsnr = jnp.asarray(logsnr, jnp.float32)
    return jnp.exp(0.5 * jax.nn.log_sigmoid(logsnr)), jnp.exp(0.5 * jax.nn.log_sigmoid(-logsnr))


def per_example(values: jax.Array, like: jax.Array) -> jax.Array:
    """Reshapes per-example values (B,) to (B, 1, ..., 1) so they broadcast against `like`.

    Scalars pass through. Diffusion data may be images (B, H, W, C) or videos (B, T, H, W, C);
    this is the one place that knows only the leading axis is the batch.
    """
    values = jnp.asarray(values)
    if values.ndim == 0:
        return values
    if values.ndim != 1 or values.shape[0] != like.shape[0]:
        raise ValueError(
            f"per-example values must be a scalar or have shape (batch,) = ({like.shape[0]},) to match data of "
            f"shape {like.shape}; got shape {values.shape}"
        )
    return values.reshape(values.shape + (1,) * (like.ndim - 1))


def diffuse(x0: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
    """The forward process z = alpha x0 + sigma eps, with logsnr a scalar or one value per example."""
    alpha, sigma = alpha_sigma(per_example(logsnr, x0))
    return alpha * x0 + sigma * eps
