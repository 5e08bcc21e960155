"""The log-SNR schedules of the variance-preserving (VP) diffusion process.

Time t runs from 0 (data) to 1 (noise). The process is z_t = alpha_t x0 + sigma_t eps with
alpha^2 = sigmoid(logsnr) and sigma^2 = sigmoid(-logsnr), so alpha^2 + sigma^2 = 1 and
logsnr = log(alpha^2 / sigma^2). Everything downstream (losses, samplers, augmentation) is written
in terms of logsnr, which is why this module is the only one that knows about t.

Two schedules: the continuous cosine schedule our models train with, and the discrete
`squaredcos_cap_v2` DDPM table that DeepFloyd IF was trained with (read at fractional steps),
so a converted IF model is sampled on the noise levels it knows.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("cosine", "ddpm_cosine")


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


@functools.lru_cache(maxsize=None)
def ddpm_cosine_logsnr(num_timesteps: int = 1000) -> np.ndarray:
    """log-SNR of DDPM step i = 0..T-1 of the `squaredcos_cap_v2` schedule (Nichol & Dhariwal), float64.

    beta_i = min(1 - f((i+1)/T) / f(i/T), 0.999) with f(s) = cos^2((s + 0.008) / 1.008 * pi/2), and
    alphabar_i = prod_{j<=i} (1 - beta_j); logsnr = log(alphabar / (1 - alphabar)). The 0.999 cap
    makes the last step nearly pure noise (logsnr ~ -19.8); step 0 is logsnr ~ +10.1.
    """
    f = lambda s: np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    i = np.arange(num_timesteps, dtype=np.float64)
    betas = np.minimum(1.0 - f((i + 1) / num_timesteps) / f(i / num_timesteps), 0.999)
    log_alphabar = np.cumsum(np.log1p(-betas))
    return log_alphabar - np.log(-np.expm1(log_alphabar))


def ddpm_index(logsnr: jax.Array, num_timesteps: int = 1000) -> jax.Array:
    """The fractional DDPM step of the `squaredcos_cap_v2` table at `logsnr` (clamped to [0, T-1]).

    The inverse of `DDPMCosineSchedule`'s interpolation: exact at the table's own levels, so a
    model conditioned on DDPM step indices (DeepFloyd IF) sees step k when sampled at table[k].
    """
    table = ddpm_cosine_logsnr(num_timesteps)
    # jnp.interp needs increasing abscissae; logsnr decreases with the step.
    return jnp.interp(-jnp.asarray(logsnr, jnp.float32), jnp.asarray(-table, jnp.float32),
                      jnp.arange(num_timesteps, dtype=jnp.float32))


@dataclasses.dataclass(frozen=True)
class DDPMCosineSchedule:
    """The discrete `squaredcos_cap_v2` DDPM schedule (DeepFloyd IF's), read at fractional steps.

    Time t in [0, 1] maps to step t T - 1 (clamped to [0, T-1]), linearly interpolated in log-SNR.
    A sampler's uniform grid t_k = (N - k) / N then visits steps T (N - k) / N - 1: the
    "trailing" timestep spacing of diffusers' DDIM/DDPM schedulers (exact when N divides T), and
    its last step to t = 0 is the x0 prediction (`set_alpha_to_one`).
    """

    num_timesteps: int = 1000

    def __post_init__(self):
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 2:
            raise ValueError(f"DDPM schedule num_timesteps={self.num_timesteps!r} must be an integer >= 2")

    def logsnr(self, t: jax.Array) -> jax.Array:
        table = jnp.asarray(ddpm_cosine_logsnr(self.num_timesteps), jnp.float32)
        step = jnp.clip(jnp.asarray(t, jnp.float32) * self.num_timesteps - 1.0, 0.0, self.num_timesteps - 1.0)
        return jnp.interp(step, jnp.arange(self.num_timesteps, dtype=jnp.float32), table)


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


def rediffuse(z_s: jax.Array, eps: jax.Array, logsnr_s: jax.Array, logsnr_t: jax.Array) -> jax.Array:
    """The forward process from one noise level to a noisier one, z_t ~ q(z_t | z_s) (scalar logsnrs,
    logsnr_t < logsnr_s): z_t = (alpha_t / alpha_s) z_s + sigma_{t|s} eps, sigma_{t|s}^2 = 1 - alpha_t^2 /
    alpha_s^2, so that diffusing x0 to s and then on to t is diffusing it to t. Both factors are exps of
    log-sigmoid differences: no cancellation between close levels."""
    log_ratio = jax.nn.log_sigmoid(logsnr_t) - jax.nn.log_sigmoid(logsnr_s)  # log(alpha_t^2 / alpha_s^2) <= 0
    return jnp.exp(0.5 * log_ratio) * z_s + jnp.sqrt(-jnp.expm1(log_ratio)) * eps
