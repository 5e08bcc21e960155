"""DDPM (ancestral), DDIM and DPM-Solver++(2M) samplers on a uniform time grid, jittable (one `lax.fori_loop`).

All walk t_k = t_start (N - k) / N for k = 0..N, call the denoiser once per step and take the
last step (to t = 0) as the x0 prediction itself. They take `predict(z, logsnr) -> output`
(already guided, see `guidance.classifier_free_guidance`) and the parameterisation of that
output; dynamic thresholding is applied to the x0 prediction inside each step, and eps is then
re-derived from the thresholded x0 so the update is self-consistent.

Update rules, with c = sigma_{t|s}^2 / sigma_t^2 = -expm1(logsnr_t - logsnr_s) in (0, 1):
    DDPM: z_s ~ q(z_s | z_t, x0) = N((1 - c) (alpha_s / alpha_t) z_t + c alpha_s x0, c sigma_s^2)
    DDIM: z_s = alpha_s x0 + sigma_s sqrt(1 - eta^2 c) eps + eta sqrt(c) sigma_s noise
DDIM with eta = 1 is the DDPM posterior written through eps; eta = 0 is deterministic.

DPM-Solver++(2M) (Lu et al. 2022) integrates the probability-flow ODE in lambda = logsnr / 2 with the
data prediction, reusing the previous step's x0 for a second-order (multistep) correction, so it
costs one model call per step like the others. With h = lambda_s - lambda_t and the previous
step's h' and x0':
    z_s = (sigma_s / sigma_t) z_t - alpha_s expm1(-h) D,   D = x0 + h / (2 h') (x0 - x0')
Its first step (no x0' yet) has D = x0, which is exactly deterministic DDIM.

Resampling (`resample` = U > 1, ancestral sampling only; RePaint, Lugmayr et al. 2022): each step
t -> s is taken U times, and between takes its result is diffused back from s to t (`rediffuse`) and
denoised again. What one take made at s is then seen by the model at t together with everything
around it, so parts of the sample that the model predicts separately (MultiDiffusion's overlapping
windows, pasted known pixels) are made to agree before the next step, at U times the model calls.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from lumiere_jax.diffusion.parameterization import check_parameterization, eps_from_x0, output_to_x0_eps
from lumiere_jax.diffusion.schedule import CosineSchedule, alpha_sigma, diffuse, rediffuse
from lumiere_jax.diffusion.thresholding import check_max_value, check_percentile, dynamic_threshold

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
# Fewest steps a config may ask of each sampler: one DPM-Solver++(2M) step is only the x0 prediction at
# pure noise (as one step of any sampler is), so a config asking for it means something else. The
# samplers themselves run any count >= 1 (an SDEdit of a short run needs one step).
MIN_STEPS = {"ddpm": 1, "ddim": 1, "dpmpp_2m": 2}

Predict = Callable[[jax.Array, jax.Array], jax.Array]  # (z, logsnr (B,)) -> model output shaped like z
Known = tuple[jax.Array, jax.Array]  # (values shaped like z, mask broadcastable to z, 1 = known)
# What a multistep sampler carries from one step to the next (DPM-Solver++: the previous x0 and its logsnr).
History = Any
# (z_t, x0, eps, logsnr_t, logsnr_s, rng, history) -> (z_s, history)
Step = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, History], tuple[jax.Array, History]]


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise ValueError(f"sample.sampler={name!r} is not supported; use one of {SAMPLERS}")
    return name


def check_num_steps(num_steps: int) -> int:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"sample.num_steps={num_steps!r} must be an integer >= 1")
    return num_steps


def check_config_num_steps(num_steps: int, sampler: str) -> int:
    """`check_num_steps`, and at least what a config may ask of `sampler` (MIN_STEPS)."""
    minimum = MIN_STEPS[check_sampler(sampler)]
    if check_num_steps(num_steps) < minimum:
        raise ValueError(f"sample.num_steps={num_steps} must be >= {minimum} for sample.sampler={sampler!r} (one step "
                         "is only the x0 prediction at pure noise: use ddim)")
    return num_steps


def check_eta(eta: float) -> float:
    """eta in [0, 1]: above 1 the DDIM noise would exceed the posterior variance (negative sqrt)."""
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"sample.ddim_eta={eta!r} must be a number in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like)")
    return float(eta)


def check_guidance_scale(scale: float) -> float:
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale < 0:
        raise ValueError(
            f"sample.guidance_scale={scale!r} must be a finite number >= 0 (0: unconditional, 1: conditional, "
            ">1: classifier-free guidance)"
        )
    return float(scale)


def check_resample(resample: int, sampler: str) -> int:
    if not isinstance(resample, int) or isinstance(resample, bool) or resample < 1:
        raise ValueError(f"sample.resample={resample!r} must be an integer >= 1 (1: each step taken once)")
    if resample > 1 and sampler != "ddpm":
        raise ValueError(f"sample.resample={resample} takes each step again from fresh noise, which the ancestral "
                         f"sampler does: set sample.sampler='ddpm' (not {sampler!r}), or sample.resample=1")
    return resample


def check_t_start(t_start: float) -> float:
    if not isinstance(t_start, (int, float)) or not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start={t_start!r} must be in (0, 1]; 1 starts from pure noise, less is SDEdit")
    return float(t_start)


def sdedit_steps(strength: float, num_steps: int) -> int:
    """How many of the sampler's `num_steps` grid steps an SDEdit of `strength` in (0, 1] runs.

    The input is noised to the grid point t = k / num_steps nearest to `strength` and denoised with
    the k steps from there: k = 0 (strength under half a step) returns the input as it is, and
    k = num_steps starts from pure noise, so the input is ignored.
    """
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0.0 < strength <= 1.0:
        raise ValueError(f"sample.strength={strength!r} must be in (0, 1]: how far along the sampler's time grid "
                         "the input is noised (near 0 keeps it, 1 ignores it)")
    return int(math.floor(strength * check_num_steps(num_steps) + 0.5))


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """The `config.sample` section, validated. Frozen, so it can be a static jit argument.

    `guidance_scale` is not used by `sample` itself: it is applied when the caller wraps its
    model into `predict` with `classifier_free_guidance`, which needs the conditioning.
    """

    sampler: str
    num_steps: int
    ddim_eta: float
    guidance_scale: float
    threshold_percentile: float
    threshold_max: float = 0.0  # caps the thresholding's s (0: no cap; DeepFloyd IF: 1.5 / 1.0)
    resample: int = 1  # takes of each step (RePaint resampling; 1: once), ancestral sampling only

    def __post_init__(self):
        check_sampler(self.sampler)
        check_resample(self.resample, self.sampler)
        check_num_steps(self.num_steps)
        check_eta(self.ddim_eta)
        check_guidance_scale(self.guidance_scale)
        check_percentile(self.threshold_percentile)
        check_max_value(self.threshold_max)


def _posterior_fraction(logsnr_t: jax.Array, logsnr_s: jax.Array) -> jax.Array:
    """c = sigma_{t|s}^2 / sigma_t^2 = 1 - SNR_t / SNR_s, without cancellation for close steps."""
    return -jnp.expm1(logsnr_t - logsnr_s)


def ddpm_step(z, x0, eps, logsnr_t, logsnr_s, rng, history=()) -> tuple[jax.Array, History]:
    """One ancestral step: a draw from the exact VP posterior q(z_s | z_t, x0). eps is unused."""
    del eps
    c = _posterior_fraction(logsnr_t, logsnr_s)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    # (1 - c) alpha_s / alpha_t, as one exp of a log: finite even where alpha_t is ~1e-5.
    z_coef = jnp.exp(
        logsnr_t - logsnr_s + 0.5 * (jax.nn.log_sigmoid(logsnr_s) - jax.nn.log_sigmoid(logsnr_t))
    )
    mean = z_coef * z + c * alpha_s * x0
    return mean + jnp.sqrt(c) * sigma_s * jax.random.normal(rng, z.shape, z.dtype), history


def ddim_step(eta: float) -> Step:
    """The DDIM update (Song et al. 2021) for a given eta; eta = 0 draws no noise (rng unused)."""
    eta = check_eta(eta)

    def step(z, x0, eps, logsnr_t, logsnr_s, rng, history=()) -> tuple[jax.Array, History]:
        c = _posterior_fraction(logsnr_t, logsnr_s)
        alpha_s, sigma_s = alpha_sigma(logsnr_s)
        z_s = alpha_s * x0 + sigma_s * jnp.sqrt(1.0 - eta**2 * c) * eps
        if eta == 0.0:
            return z_s, history
        return z_s + eta * jnp.sqrt(c) * sigma_s * jax.random.normal(rng, z.shape, z.dtype), history

    return step


def dpmpp_2m_step(z, x0, eps, logsnr_t, logsnr_s, rng, history) -> tuple[jax.Array, History]:
    """One DPM-Solver++(2M) step t -> s from x0 = x0(z_t) and the previous step's (x0', logsnr_t').

    Deterministic (eps and rng unused). sigma_s / sigma_t and expm1(-h) are written without
    cancellation, so steps between nearly equal noise levels stay accurate in float32.
    """
    del eps, rng
    x0_prev, logsnr_prev = history
    h = 0.5 * (logsnr_s - logsnr_t)
    h_prev = 0.5 * (logsnr_t - logsnr_prev)
    correction = jnp.where(h_prev > 0, h / (2.0 * h_prev), 0.0)  # h' = 0 before the first step: D = x0
    d = x0 + correction * (x0 - x0_prev)
    alpha_s, _ = alpha_sigma(logsnr_s)
    sigma_ratio = jnp.exp(0.5 * (jax.nn.log_sigmoid(-logsnr_s) - jax.nn.log_sigmoid(-logsnr_t)))
    return sigma_ratio * z - alpha_s * jnp.expm1(-h) * d, (x0, logsnr_t)


def denoise(
    predict: Predict, z: jax.Array, logsnr: jax.Array, parameterization: str, threshold_percentile: float,
    threshold_max: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """(x0, eps) predicted at (z, scalar logsnr), x0 dynamically thresholded and eps re-derived from it."""
    alpha, sigma = alpha_sigma(logsnr)
    output = predict(z, jnp.full((z.shape[0],), logsnr, jnp.float32))
    if output.shape != z.shape:
        raise ValueError(f"predict returned shape {output.shape}; it must match the sample shape {z.shape}")
    x0, eps = output_to_x0_eps(output, z, alpha, sigma, parameterization)
    if threshold_percentile > 0:
        x0 = dynamic_threshold(x0, threshold_percentile, threshold_max)
        eps = eps_from_x0(z, x0, alpha, sigma)
    return x0, eps


def replace_known(z: jax.Array, known: Known, logsnr: jax.Array, rng: jax.Array) -> jax.Array:
    """The replacement method: the known pixels, diffused afresh to `logsnr`, pasted into z.

    The training-free way to condition an unconditional model on known pixels (Song et al. 2021;
    Ho et al. 2022, "Video Diffusion Models"): `known` = (values shaped like z, mask broadcastable
    to z, 1 = known). The model never sees the mask, only noisy known pixels.
    """
    values, mask = known
    noisy = diffuse(values.astype(jnp.float32), jax.random.normal(rng, z.shape, jnp.float32), logsnr)
    return mask * noisy + (1.0 - mask) * z


def _run(
    step: Step,
    draws_noise: bool,
    predict: Predict,
    noise: jax.Array,
    rng: jax.Array,
    schedule: CosineSchedule,
    num_steps: int,
    parameterization: str,
    threshold_percentile: float,
    threshold_max: float,
    t_start: float,
    known: Optional[Known] = None,
    history: History = (),
    resample: int = 1,
) -> jax.Array:
    """The loop shared by all samplers; the model is traced once (inside the loop body). `history` is
    the step's carry before the first step (() for single-step samplers); `resample` the takes of each
    step (module docstring)."""
    num_steps = check_num_steps(num_steps)
    if rng is None and (draws_noise or known is not None):
        raise ValueError("this sampler draws noise (DDPM, DDIM with eta > 0, or replacement of known pixels): "
                         "pass a jax.random key as rng")
    check_parameterization(parameterization)
    threshold_percentile, threshold_max = check_percentile(threshold_percentile), check_max_value(threshold_max)
    t_start = check_t_start(t_start)

    def take(z, logsnr_t, logsnr_s, key, history):
        """One take of a step from z at logsnr_t: (x0, z_s, history); `key` draws its noise (None: none)."""
        if known is not None:
            z = replace_known(z, known, logsnr_t, jax.random.fold_in(key, 1))
        x0, eps = denoise(predict, z, logsnr_t, parameterization, threshold_percentile, threshold_max)
        z_s, history_s = step(z, x0, eps, logsnr_t, logsnr_s, key, history)
        return x0, z_s, history_s

    def body(k, carry):
        z, history = carry
        t = t_start * (num_steps - k) / num_steps
        s = t_start * (num_steps - k - 1) / num_steps
        logsnr_t, logsnr_s = schedule.logsnr(t), schedule.logsnr(s)
        key = None if rng is None else jax.random.fold_in(rng, k)
        if resample == 1:
            x0, z_s, history = take(z, logsnr_t, logsnr_s, key, history)
        else:  # all U takes in one loop (one trace of the model); take u > 0 starts from z_s diffused back
            def take_u(u, previous):
                retake = jax.random.fold_in(jax.random.fold_in(key, 2), u)
                back = rediffuse(previous[1], jax.random.normal(jax.random.fold_in(retake, 0), z.shape, jnp.float32),
                                 logsnr_s, logsnr_t)
                first = u == 0
                take_key = jax.lax.cond(first, lambda: key, lambda: retake)
                return take(jnp.where(first, z, back), logsnr_t, logsnr_s, take_key, history)

            x0, z_s, history = jax.lax.fori_loop(0, resample, take_u, (jnp.zeros_like(z), z, history))
        return jnp.where(k == num_steps - 1, x0, z_s), history

    return jax.lax.fori_loop(0, num_steps, body, (noise.astype(jnp.float32), history))[0]


def ddpm_sample(
    predict: Predict,
    noise: jax.Array,
    rng: jax.Array,
    schedule: CosineSchedule,
    *,
    num_steps: int,
    parameterization: str,
    threshold_percentile: float = 0.0,
    threshold_max: float = 0.0,
    t_start: float = 1.0,
    known: Optional[Known] = None,
    resample: int = 1,
) -> jax.Array:
    """Ancestral sampling from z_{t_start} = `noise` (standard normal for t_start = 1) to x0.

    t_start < 1 starts from a partially noised input (SDEdit); then `noise` must be that input
    diffused to `schedule.logsnr(t_start)` with `diffuse`. `known` (values, mask) pastes known
    pixels in before every model call (`replace_known`). `resample` takes each step that many times
    (RePaint resampling, module docstring).
    """
    return _run(
        ddpm_step, True, predict, noise, rng, schedule, num_steps, parameterization, threshold_percentile,
        threshold_max, t_start, known, resample=check_resample(resample, "ddpm"),
    )


def ddim_sample(
    predict: Predict,
    noise: jax.Array,
    rng: jax.Array,
    schedule: CosineSchedule,
    *,
    num_steps: int,
    parameterization: str,
    eta: float = 0.0,
    threshold_percentile: float = 0.0,
    threshold_max: float = 0.0,
    t_start: float = 1.0,
    known: Optional[Known] = None,
) -> jax.Array:
    """DDIM sampling from z_{t_start} = `noise` to x0; `rng` is only used when eta > 0 or with `known`
    (None is fine otherwise)."""
    return _run(
        ddim_step(eta), eta > 0, predict, noise, rng, schedule, num_steps, parameterization, threshold_percentile,
        threshold_max, t_start, known,
    )


def dpmpp_2m_sample(
    predict: Predict,
    noise: jax.Array,
    rng: jax.Array,
    schedule: CosineSchedule,
    *,
    num_steps: int,
    parameterization: str,
    threshold_percentile: float = 0.0,
    threshold_max: float = 0.0,
    t_start: float = 1.0,
    known: Optional[Known] = None,
) -> jax.Array:
    """DPM-Solver++(2M) sampling from z_{t_start} = `noise` to x0 (deterministic; `rng` is only used
    with `known`). The last step returns the x0 prediction, as the other samplers do."""
    # Before the first step: no previous x0, and a previous step h' = 0 (its logsnr is the start's), so D = x0.
    history = (jnp.zeros(noise.shape, jnp.float32), schedule.logsnr(check_t_start(t_start)))
    return _run(
        dpmpp_2m_step, False, predict, noise, rng, schedule, num_steps, parameterization, threshold_percentile,
        threshold_max, t_start, known, history,
    )


def sample(
    predict: Predict,
    noise: jax.Array,
    rng: jax.Array,
    schedule: CosineSchedule,
    settings: SamplerSettings,
    *,
    parameterization: str,
    t_start: float = 1.0,
    known: Optional[Known] = None,
) -> jax.Array:
    """Runs the sampler named in `settings` (guidance must already be inside `predict`)."""
    common = dict(
        num_steps=settings.num_steps,
        parameterization=parameterization,
        threshold_percentile=settings.threshold_percentile,
        threshold_max=settings.threshold_max,
        t_start=t_start,
        known=known,
    )
    if check_sampler(settings.sampler) == "ddpm":
        return ddpm_sample(predict, noise, rng, schedule, resample=settings.resample, **common)
    if settings.sampler == "dpmpp_2m":
        return dpmpp_2m_sample(predict, noise, rng, schedule, **common)
    return ddim_sample(predict, noise, rng, schedule, eta=settings.ddim_eta, **common)
