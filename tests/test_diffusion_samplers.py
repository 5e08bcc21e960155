"""Samplers against closed form: Gaussian data, the exact optimal denoiser, a float64 reference.

For x0 ~ N(MU, S^2) per dimension, E[x0 | z_t] = MU + alpha S^2 / (alpha^2 S^2 + sigma^2) (z - alpha MU)
is the best any network can do. Fed to a sampler, it must
  (a) reproduce the data distribution within a few percent (the samplers' discretisation error
      is O(1/N) and makes the std a little low: measured ~2% for DDIM at 128 steps and DDPM at 256),
  (b) agree with the exact moments of the *discrete* algorithm, which are linear-Gaussian and
      computed here by an independent float64 recursion (sampling error ~0.2%).
The denoiser output is converted to v / eps with the definitions written out here, not with the
package's conversions.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumiere_jax import diffusion
from random_arrays import normal, uniform

MU, S = 0.7, 0.3
SHAPE = (8, 10, 10, 25, 8)  # rank-5 video batch, 20k values per example, 160k in all
SCHEDULE = diffusion.CosineSchedule()


def ref_logsnr(t: float) -> float:
    a = math.atan(math.exp(-SCHEDULE.logsnr_max / 2))
    b = math.atan(math.exp(-SCHEDULE.logsnr_min / 2))
    return -2 * math.log(math.tan(a + t * (b - a)))


def optimal_predict(parameterization: str, mu: float = MU, s: float = S):
    """predict(z, logsnr) of the exact denoiser for N(mu, s^2) data, in the given parameterisation."""

    def predict(z, logsnr):
        logsnr = logsnr.reshape((-1,) + (1,) * (z.ndim - 1))
        alpha, sigma = jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))
        x0 = mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (z - alpha * mu)
        eps = (z - alpha * x0) / sigma
        return alpha * eps - sigma * x0 if parameterization == "v" else eps

    return predict


def reference_moments(
    kind: str, num_steps: int, t_start: float = 1.0, mean: float = 0.0, var: float = 1.0, eta: float = 0.0
):
    """Exact mean and std of the sampler's output, float64: every step is affine in z, plus noise."""
    for k in range(num_steps):
        lt = ref_logsnr(t_start * (num_steps - k) / num_steps)
        ls = ref_logsnr(t_start * (num_steps - k - 1) / num_steps)
        a_t, s_t = math.sqrt(1 / (1 + math.exp(-lt))), math.sqrt(1 / (1 + math.exp(lt)))
        a_s, s_s = math.sqrt(1 / (1 + math.exp(-ls))), math.sqrt(1 / (1 + math.exp(ls)))
        gain = a_t * S**2 / (a_t**2 * S**2 + s_t**2)
        offset = MU - gain * a_t * MU  # x0_hat = offset + gain z
        if k == num_steps - 1:
            return offset + gain * mean, math.sqrt(gain**2 * var)
        snr_ratio = math.exp(lt - ls)  # SNR_t / SNR_s
        if kind == "ddpm":  # q(z_s | z_t, x0): mean A z + B x0, variance (1 - snr_ratio) s_s^2
            z_gain, x_gain, noise_var = snr_ratio * a_s / a_t, (1 - snr_ratio) * a_s, (1 - snr_ratio) * s_s**2
        else:  # DDIM: z_s = a_s x0 + s_s sqrt(1 - eta^2 c) (z - a_t x0) / s_t + eta sqrt(c) s_s noise
            c = 1 - snr_ratio
            direction = s_s * math.sqrt(1 - eta**2 * c) / s_t
            z_gain, x_gain, noise_var = direction, a_s - direction * a_t, eta**2 * c * s_s**2
        total_gain = z_gain + x_gain * gain
        mean, var = total_gain * mean + x_gain * offset, total_gain**2 * var + noise_var
    raise AssertionError("unreachable")


def reference_dpmpp_2m_moments(num_steps: int):
    """Exact mean and std of DPM-Solver++(2M)'s output, float64. The sampler is deterministic and every
    quantity affine in the starting noise n ~ N(0, 1), so each is tracked as (A, B): A n + B."""
    z, previous = (1.0, 0.0), None  # previous: the last step's x0 as (A, B), and its logsnr
    for k in range(num_steps):
        lt = ref_logsnr((num_steps - k) / num_steps)
        ls = ref_logsnr((num_steps - k - 1) / num_steps)
        a_t, s_t = math.sqrt(1 / (1 + math.exp(-lt))), math.sqrt(1 / (1 + math.exp(lt)))
        a_s, s_s = math.sqrt(1 / (1 + math.exp(-ls))), math.sqrt(1 / (1 + math.exp(ls)))
        gain = a_t * S**2 / (a_t**2 * S**2 + s_t**2)
        x0 = (gain * z[0], gain * z[1] + MU - gain * a_t * MU)
        if k == num_steps - 1:
            return x0[1], abs(x0[0])
        h = (ls - lt) / 2  # step in lambda = log(alpha / sigma)
        if previous is None:
            d = x0
        else:  # the multistep estimate of x0 over the step: x0 + h / (2 h') (x0 - x0')
            r = h / (2 * (lt - previous[1]) / 2)
            d = tuple(x + r * (x - p) for x, p in zip(x0, previous[0]))
        z = tuple(s_s / s_t * zi - a_s * math.expm1(-h) * di for zi, di in zip(z, d))
        previous = (x0, lt)
    raise AssertionError("unreachable")


def run(sampler, predict, noise, rng=jax.random.key(1), **kwargs):
    return jax.jit(functools.partial(sampler, predict, schedule=SCHEDULE, **kwargs))(noise, rng)


@pytest.fixture(scope="module")
def noise():
    return normal(0, SHAPE)


def assert_moments(samples, mean, std, mean_atol, std_rtol):
    samples = np.asarray(samples, np.float64)
    assert abs(samples.mean() - mean) < mean_atol, (samples.mean(), mean)
    assert abs(samples.std() / std - 1) < std_rtol, (samples.std(), std)


@pytest.mark.parametrize("parameterization", ["v", "eps"])
@pytest.mark.parametrize("kind, num_steps", [("ddpm", 256), ("ddim", 128)])
def test_sampler_matches_gaussian_data_and_exact_discrete_moments(noise, parameterization, kind, num_steps):
    sampler = diffusion.ddpm_sample if kind == "ddpm" else diffusion.ddim_sample
    out = run(sampler, optimal_predict(parameterization), noise, num_steps=num_steps, parameterization=parameterization)
    assert out.shape == SHAPE and out.dtype == jnp.float32
    assert_moments(out, MU, S, mean_atol=0.01 * MU, std_rtol=0.03)  # the data distribution
    ref_mean, ref_std = reference_moments(kind, num_steps)
    assert_moments(out, ref_mean, ref_std, mean_atol=0.003, std_rtol=0.01)  # the exact algorithm


@pytest.mark.parametrize("parameterization", ["v", "eps"])
def test_dpmpp_2m_at_a_quarter_of_the_steps_is_as_close_to_the_data_as_ddim(noise, parameterization):
    out = run(diffusion.dpmpp_2m_sample, optimal_predict(parameterization), noise, num_steps=32,
              parameterization=parameterization)
    ref_mean, ref_std = reference_dpmpp_2m_moments(32)
    assert_moments(out, ref_mean, ref_std, mean_atol=0.003, std_rtol=0.01)  # the exact algorithm
    assert_moments(out, MU, S, mean_atol=0.01 * MU, std_rtol=0.03)  # the data distribution
    # The algorithms themselves, without sampling error: 32 DPM-Solver++(2M) steps land closer to the
    # data's std than 128 DDIM steps (0.5% vs 1.7% off), and 32 DDIM steps are 6.8% off.
    assert abs(ref_std / S - 1) < abs(reference_moments("ddim", 128)[1] / S - 1) < 0.02
    assert abs(reference_moments("ddim", 32)[1] / S - 1) > 0.05


def test_dpmpp_2m_starts_as_ddim_and_then_corrects(noise):
    """Its first step has no previous x0, so it is the DDIM step; with one or two steps (the last returns
    x0) the two samplers agree, with more the second-order correction changes the result."""
    predict, kwargs = optimal_predict("v"), dict(parameterization="v")
    for steps in (1, 2):
        np.testing.assert_allclose(run(diffusion.dpmpp_2m_sample, predict, noise, num_steps=steps, **kwargs),
                                   run(diffusion.ddim_sample, predict, noise, num_steps=steps, **kwargs), atol=1e-6)
    assert not np.allclose(run(diffusion.dpmpp_2m_sample, predict, noise, num_steps=8, **kwargs),
                           run(diffusion.ddim_sample, predict, noise, num_steps=8, **kwargs), atol=1e-3)


def test_stochastic_ddim_matches_its_exact_discrete_moments(noise):
    out = run(diffusion.ddim_sample, optimal_predict("v"), noise, num_steps=128, parameterization="v", eta=0.5)
    assert_moments(out, *reference_moments("ddim", 128, eta=0.5), mean_atol=0.003, std_rtol=0.01)
    assert_moments(out, MU, S, mean_atol=0.01 * MU, std_rtol=0.03)


def test_the_last_step_returns_the_x0_prediction(noise):
    """One step from t = 1: the output is exactly x0_hat(noise), not a draw around it at t = 0."""
    predict = optimal_predict("eps")
    out = run(diffusion.ddpm_sample, predict, noise, num_steps=1, parameterization="eps")
    logsnr = jnp.full((SHAPE[0],), SCHEDULE.logsnr_min)
    alpha, sigma = (jnp.full((SHAPE[0], 1, 1, 1, 1), v) for v in diffusion.alpha_sigma(SCHEDULE.logsnr_min))
    expected = (noise - sigma * predict(noise, logsnr)) / alpha
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_ddim_with_eta_one_is_the_ddpm_posterior(noise):
    """Two derivations of the same step (via z_t and x0, via x0 and eps) agree draw for draw."""
    kwargs = dict(num_steps=32, parameterization="v")
    ddpm = run(diffusion.ddpm_sample, optimal_predict("v"), noise, **kwargs)
    ddim = run(diffusion.ddim_sample, optimal_predict("v"), noise, eta=1.0, **kwargs)
    np.testing.assert_allclose(ddim, ddpm, atol=1e-5)


def test_sdedit_start_from_partially_noised_data_keeps_the_distribution(noise):
    t_start = 0.4
    x0 = MU + S * normal(7, SHAPE)
    z_start = diffusion.diffuse(x0, noise, SCHEDULE.logsnr(t_start))
    out = run(diffusion.ddim_sample, optimal_predict("v"), z_start, num_steps=64, parameterization="v", t_start=t_start)
    alpha, sigma = diffusion.alpha_sigma(ref_logsnr(t_start))
    ref_mean, ref_std = reference_moments(
        "ddim", 64, t_start, mean=float(alpha) * MU, var=float(alpha) ** 2 * S**2 + float(sigma) ** 2
    )
    assert_moments(out, ref_mean, ref_std, mean_atol=0.003, std_rtol=0.01)
    assert_moments(out, MU, S, mean_atol=0.01 * MU, std_rtol=0.03)
    # Deterministic DDIM from a partially noised input keeps much of it (here corr ~0.4).
    assert np.corrcoef(np.ravel(out), np.ravel(x0))[0, 1] > 0.3


def test_thresholding_in_samplers(noise):
    # In-range predictions (narrow data around 0): thresholding is a no-op and the re-derived eps
    # gives the same trajectory.
    narrow = optimal_predict("v", mu=0.0, s=0.15)
    kwargs = dict(num_steps=32, parameterization="v")
    plain = run(diffusion.ddpm_sample, narrow, noise, **kwargs)
    assert float(jnp.max(jnp.abs(plain))) < 1.0
    thresholded = run(diffusion.ddpm_sample, narrow, noise, threshold_percentile=99.5, **kwargs)
    np.testing.assert_allclose(thresholded, plain, atol=1e-5)
    # Out-of-range predictions (MU + a few S exceeds 1): the returned x0 is rescaled into [-1, 1].
    for sampler in (diffusion.ddpm_sample, diffusion.dpmpp_2m_sample):
        wide = run(sampler, optimal_predict("v"), noise, threshold_percentile=99.5, **kwargs)
        assert float(jnp.max(jnp.abs(wide))) <= 1.0
        assert float(jnp.mean(wide)) < MU - 0.1  # divided by s > 1, not merely clipped


def test_sample_dispatches_on_settings(noise):
    settings = diffusion.SamplerSettings(
        sampler="ddim", num_steps=16, ddim_eta=0.0, guidance_scale=1.0, threshold_percentile=0.0
    )
    direct = run(diffusion.ddim_sample, optimal_predict("eps"), noise, num_steps=16, parameterization="eps")
    via = run(diffusion.sample, optimal_predict("eps"), noise, settings=settings, parameterization="eps")
    np.testing.assert_array_equal(via, direct)


def test_guided_sampling_interpolates_between_the_two_denoisers(noise):
    """A traced guidance scale: w=0 samples the unconditional Gaussian, w=1 the conditional one."""
    mu_u, s_u = -0.2, 0.5
    cond_predict, uncond_predict = optimal_predict("v"), optimal_predict("v", mu=mu_u, s=s_u)

    def model_fn(z, logsnr, conditioning):  # the conditioning flag picks the denoiser per example
        flag = conditioning["mask"].reshape((-1,) + (1,) * (z.ndim - 1))
        return jnp.where(flag > 0, cond_predict(z, logsnr), uncond_predict(z, logsnr))

    conditioning = {"mask": jnp.ones((SHAPE[0],), jnp.int32)}
    null = diffusion.null_text_conditioning(conditioning)

    @functools.partial(jax.jit, static_argnums=1)
    def guided_sample(scale, sampler):
        predict = diffusion.classifier_free_guidance(model_fn, conditioning, null, scale)
        if sampler == "ddim":
            return diffusion.ddim_sample(predict, noise, None, SCHEDULE, num_steps=128, parameterization="v")
        return diffusion.dpmpp_2m_sample(predict, noise, None, SCHEDULE, num_steps=32, parameterization="v")

    for sampler in ("ddim", "dpmpp_2m"):
        assert_moments(guided_sample(0.0, sampler), mu_u, s_u, mean_atol=0.01, std_rtol=0.03)
        assert_moments(guided_sample(1.0, sampler), MU, S, mean_atol=0.01 * MU, std_rtol=0.03)


def test_bad_sampler_arguments_are_rejected(noise):
    with pytest.raises(ValueError, match="num_steps"):
        diffusion.ddpm_sample(optimal_predict("v"), noise, None, SCHEDULE, num_steps=0, parameterization="v")
    with pytest.raises(ValueError, match="parameterization"):
        diffusion.ddim_sample(optimal_predict("v"), noise, None, SCHEDULE, num_steps=4, parameterization="x0")
    with pytest.raises(ValueError, match="ddim_eta"):
        diffusion.ddim_sample(optimal_predict("v"), noise, None, SCHEDULE, num_steps=4, parameterization="v", eta=2.0)
    with pytest.raises(ValueError, match=r"predict returned shape \(8, 10, 10, 25, 1\)"):
        diffusion.ddim_sample(lambda z, l: z[..., :1], noise, None, SCHEDULE, num_steps=4, parameterization="v")
    one_step = dict(sampler="dpmpp_2m", num_steps=1, ddim_eta=0.0, guidance_scale=1.0, threshold_percentile=0.0,
                    threshold_max=0.0)
    with pytest.raises(ValueError, match=r"sample.num_steps=1 must be >= 2 for sample.sampler='dpmpp_2m'"):
        diffusion.sampler_settings_from_config(one_step)
    with pytest.raises(ValueError, match=r"sample.sampler='dpm' is not supported; use one of"):
        diffusion.SamplerSettings(sampler="dpm", num_steps=8, ddim_eta=0.0, guidance_scale=1.0,
                                  threshold_percentile=0.0)
    with pytest.raises(ValueError, match="pass a jax.random key"):
        diffusion.ddpm_sample(optimal_predict("v"), noise, None, SCHEDULE, num_steps=4, parameterization="v")
    with pytest.raises(ValueError, match="t_start"):
        diffusion.ddim_sample(optimal_predict("v"), noise, None, SCHEDULE, num_steps=4, parameterization="v", t_start=0)
    with pytest.raises(ValueError, match=r"sample.resample=2 .* set sample.sampler='ddpm' \(not 'dpmpp_2m'\)"):
        diffusion.sampler_settings_from_config(dict(one_step, num_steps=8, resample=2))
    with pytest.raises(ValueError, match=r"sample.resample=0 must be an integer >= 1"):
        diffusion.ddpm_sample(optimal_predict("v"), noise, jax.random.key(0), SCHEDULE, num_steps=4,
                              parameterization="v", resample=0)


def test_rediffusing_a_diffused_sample_is_diffusing_it_further():
    """q(z_t | z_s) after q(z_s | x): z_t = alpha_t x + (alpha_t / alpha_s) sigma_s eps_1 + sigma_{t|s} eps_2,
    whose two noise terms add up to variance sigma_t^2: the marginal q(z_t | x). Checked for levels far
    apart and a float32 hair apart (where 1 - alpha_t^2 / alpha_s^2 would cancel)."""
    x, eps_1, eps_2 = (normal(i, (6,)) for i in range(3))
    for logsnr_s, logsnr_t in ((20.0, -20.0), (3.0, -1.0), (0.5, 0.4999), (-5.0, -5.001)):
        alpha_s, sigma_s = (math.sqrt(1 / (1 + math.exp(sign * logsnr_s))) for sign in (-1, 1))
        alpha_t, sigma_t = (math.sqrt(1 / (1 + math.exp(sign * logsnr_t))) for sign in (-1, 1))
        z_t = diffusion.rediffuse(diffusion.diffuse(x, eps_1, jnp.float32(logsnr_s)), eps_2, logsnr_s, logsnr_t)
        carried = alpha_t / alpha_s * sigma_s
        added = math.sqrt(sigma_t**2 - carried**2)
        np.testing.assert_allclose(z_t, alpha_t * x + carried * eps_1 + added * eps_2, rtol=2e-3, atol=1e-5)
        assert carried**2 + added**2 == pytest.approx(sigma_t**2)


def test_resampling_conditions_on_known_pixels_where_replacement_alone_falls_short():
    """RePaint's case, in closed form: two pixels, jointly Gaussian with correlation RHO, the exact
    denoiser, pixel 0 known (= A) and pasted in by the replacement method. The true conditional mean of
    pixel 1 is RHO * A; replacement alone lands well short of it (the model only ever sees the known
    pixel through noise), and taking each step again after diffusing it back closes most of the gap."""
    rho, a, batch = 0.95, 1.5, 4096
    cov = jnp.array([[1.0, rho], [rho, 1.0]])

    def predict(z, logsnr):  # eps of the exact E[x0 | z] = alpha cov (alpha^2 cov + sigma^2 I)^-1 z
        alpha, sigma = jnp.sqrt(jax.nn.sigmoid(logsnr[0])), jnp.sqrt(jax.nn.sigmoid(-logsnr[0]))
        x0 = z @ (alpha * cov @ jnp.linalg.inv(alpha**2 * cov + sigma**2 * jnp.eye(2))).T
        return (z - alpha * x0) / sigma

    known = (jnp.tile(jnp.array([[a, 0.0]]), (batch, 1)), jnp.array([[1.0, 0.0]]))
    noise = jax.random.normal(jax.random.key(0), (batch, 2))
    gap = {}
    for takes in (1, 2, 10):
        out = diffusion.ddpm_sample(predict, noise, jax.random.key(1), SCHEDULE, num_steps=10, parameterization="eps",
                                    known=known, resample=takes)
        gap[takes] = abs(float(out[:, 1].mean()) - rho * a)  # Monte Carlo error ~0.3 / sqrt(4096) = 0.005
    assert gap[1] > 0.3 and gap[2] < 0.7 * gap[1] and gap[10] < 0.15 * gap[1], gap


def test_guided_thresholded_sampling_and_loss_run_batch_sharded_on_a_mesh():
    """The same numbers on 8 devices (batch over data x fsdp) as on one: no op assumes a local batch."""
    from lumiere_jax.parallel import batch_sharding, logical_axis_rules, make_mesh

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shape = (8, 4, 6, 6, 3)
    x0 = uniform(3, shape, -1, 1)
    conditioning = {"embeddings": normal(4, (shape[0], 5, 8))}
    null = diffusion.null_text_conditioning(conditioning)

    def model_fn(z, logsnr, cond):  # a toy model whose output depends on its conditioning
        return 2.0 * z * jnp.mean(cond["embeddings"], axis=(1, 2)).reshape(-1, 1, 1, 1, 1) - 0.5

    @jax.jit
    def step(noise, x0, rng):
        predict = diffusion.classifier_free_guidance(model_fn, conditioning, null, 3.0)
        samples = diffusion.ddpm_sample(
            predict, noise, rng, SCHEDULE, num_steps=8, parameterization="v", threshold_percentile=99.5
        )
        loss, _ = diffusion.diffusion_loss(
            lambda z, l: model_fn(z, l, conditioning), x0, rng, SCHEDULE, parameterization="eps"
        )
        return samples, loss

    noise = normal(5, shape)
    single = step(noise, x0, jax.random.key(6))
    sharding = batch_sharding(mesh, logical_axis_rules(None), len(shape))
    sharded = step(jax.device_put(noise, sharding), jax.device_put(x0, sharding), jax.random.key(6))
    assert len(sharded[0].sharding.device_set) == 8
    for a, b in zip(sharded, single):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
