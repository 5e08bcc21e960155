"""Schedule, conversions, thresholding, loss, guidance, dropout, augmentation and config checks.

References are independent of the code under test: numpy float64 formulas, the definitions of
v / eps written out, closed-form Gaussian expectations. The samplers are in
test_diffusion_samplers.py.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumiere_jax import diffusion
from lumiere_jax.config import base_config
from random_arrays import normal, uniform


def np_alpha_sigma(logsnr):
    logsnr = np.asarray(logsnr, np.float64)
    return np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))


def jnp_alpha_sigma(logsnr, ndim):
    """The same formula for traced (B,) logsnr inside model functions, shaped to broadcast."""
    logsnr = logsnr.reshape((-1,) + (1,) * (ndim - 1))
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("logsnr_min, logsnr_max", [(-20.0, 20.0), (-12.0, 7.5)])
def test_schedule_endpoints_monotone_and_reference(logsnr_min, logsnr_max):
    schedule = diffusion.CosineSchedule(logsnr_min=logsnr_min, logsnr_max=logsnr_max)
    np.testing.assert_allclose(float(schedule.logsnr(0.0)), logsnr_max, atol=1e-4)
    np.testing.assert_allclose(float(schedule.logsnr(1.0)), logsnr_min, atol=1e-4)
    t = np.linspace(0.0, 1.0, 10001).astype(np.float32)
    logsnr = np.asarray(schedule.logsnr(t))
    assert np.all(np.diff(logsnr) < 0)
    a, b = math.atan(math.exp(-logsnr_max / 2)), math.atan(math.exp(-logsnr_min / 2))
    reference = -2 * np.log(np.tan(a + t.astype(np.float64) * (b - a)))  # float64, same float32 times
    assert np.max(np.abs(logsnr - reference) / np.maximum(1, np.abs(reference))) < 1e-5


@pytest.mark.parametrize("shift", [2.0, 0.5, 4.0])
def test_shift_moves_logsnr_by_minus_two_log_shift(shift):
    t = jnp.linspace(0.0, 1.0, 101)
    plain = diffusion.CosineSchedule().logsnr(t)
    shifted = diffusion.CosineSchedule(shift=shift).logsnr(t)
    np.testing.assert_allclose(shifted - plain, -2 * math.log(shift), atol=1e-5)


def test_alpha_sigma_variance_preserving_and_accurate_at_extremes():
    logsnr = np.linspace(-30, 30, 601).astype(np.float32)
    alpha, sigma = diffusion.alpha_sigma(logsnr)
    np.testing.assert_allclose(np.asarray(alpha) ** 2 + np.asarray(sigma) ** 2, 1.0, atol=1e-6)
    ref_alpha, ref_sigma = np_alpha_sigma(logsnr)
    # Relative accuracy everywhere, including sigma ~ 3e-7 at logsnr = 30 (no 1 - x cancellation).
    np.testing.assert_allclose(alpha, ref_alpha, rtol=1e-6)
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-6)
    np.testing.assert_allclose(np.log(ref_alpha**2 / ref_sigma**2), logsnr, atol=1e-5)


def test_per_example_rejects_a_batch_mismatch():
    with pytest.raises(ValueError, match=r"shape \(batch,\) = \(4,\)"):
        diffusion.per_example(jnp.zeros(3), jnp.zeros((4, 2, 2)))


# ----------------------------------------------------------------------------- parameterisation


@pytest.fixture
def triple():
    """(x0, eps, z, v, alpha, sigma) built from the definitions, rank-5, moderate noise levels."""
    x0 = normal(0, (4, 3, 5, 5, 2))
    eps = normal(1, x0.shape)
    logsnr = uniform(2, (4,), -6.0, 6.0)
    alpha, sigma = (a.reshape(4, 1, 1, 1, 1).astype(np.float32) for a in np_alpha_sigma(logsnr))
    z = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    return x0, eps, z, v, alpha, sigma


def test_conversions_recover_the_definitions(triple):
    x0, eps, z, v, alpha, sigma = triple
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(diffusion.x0_from_eps(z, eps, alpha, sigma), x0, **tol)
    np.testing.assert_allclose(diffusion.eps_from_x0(z, x0, alpha, sigma), eps, **tol)
    np.testing.assert_allclose(diffusion.x0_from_v(z, v, alpha, sigma), x0, **tol)
    np.testing.assert_allclose(diffusion.eps_from_v(z, v, alpha, sigma), eps, **tol)
    np.testing.assert_allclose(diffusion.v_from_x0(z, x0, alpha, sigma), v, **tol)
    np.testing.assert_allclose(diffusion.v_from_eps(z, eps, alpha, sigma), v, **tol)
    np.testing.assert_allclose(diffusion.v_from_x0_eps(x0, eps, alpha, sigma), v, rtol=1e-6, atol=1e-6)
    for parameterization, output in (("v", v), ("eps", eps)):
        got_x0, got_eps = diffusion.output_to_x0_eps(output, z, alpha, sigma, parameterization)
        np.testing.assert_allclose(got_x0, x0, **tol)
        np.testing.assert_allclose(got_eps, eps, **tol)
        np.testing.assert_allclose(diffusion.training_target(x0, eps, alpha, sigma, parameterization), output)


def test_conversions_round_trip(triple):
    _, _, z, _, alpha, sigma = triple
    r = normal(1, z.shape)
    pairs = [
        (diffusion.x0_from_v, diffusion.v_from_x0),
        (diffusion.eps_from_v, diffusion.v_from_eps),
        (diffusion.x0_from_eps, diffusion.eps_from_x0),
    ]
    for forward, backward in pairs:
        for f, g in ((forward, backward), (backward, forward)):
            np.testing.assert_allclose(f(z, g(z, r, alpha, sigma), alpha, sigma), r, rtol=1e-5, atol=1e-5)


def test_unknown_parameterization():
    with pytest.raises(ValueError, match=r"diffusion.parameterization='x0'.*\('v', 'eps'\)"):
        diffusion.training_target(1.0, 1.0, 1.0, 0.0, "x0")


# ----------------------------------------------------------------------------- thresholding


def np_dynamic_threshold(x, p):
    flat = np.abs(np.asarray(x, np.float64)).reshape(x.shape[0], -1)
    s = np.maximum(np.percentile(flat, p, axis=1), 1.0).reshape((-1,) + (1,) * (x.ndim - 1))
    return np.clip(x, -s, s) / s


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 4, 8, 8)])
def test_dynamic_threshold_in_range_is_bit_exact(shape):
    x = uniform(0, shape, -1.0, 1.0).at[0, 0].set(1.0)
    out = jax.jit(lambda v: diffusion.dynamic_threshold(v, 99.5))(x)
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("percentile", [99.5, 90.0, 50.0, 100.0])
@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 4, 8, 8)])
def test_dynamic_threshold_matches_numpy_formula(shape, percentile):
    x = 2.5 * normal(1, shape)
    x = x.at[0].multiply(0.2)  # one sample mostly in range: s = max(percentile, 1) must kick in
    out = np.asarray(diffusion.dynamic_threshold(x, percentile))
    np.testing.assert_allclose(out, np_dynamic_threshold(np.asarray(x), percentile), rtol=1e-6, atol=1e-6)
    assert np.abs(out).max() <= 1.0


def test_dynamic_threshold_cap_limits_the_scale():
    """IF's sample_max_value: s = clip(percentile, 1, cap); a cap of 1 is static clipping."""
    x = jnp.asarray(np.linspace(-4.0, 4.0, 64, dtype=np.float32).reshape(2, 32))
    np.testing.assert_allclose(np.asarray(diffusion.dynamic_threshold(x, 99.0, 1.0)), np.clip(np.asarray(x), -1, 1))
    capped = np.asarray(diffusion.dynamic_threshold(x, 99.0, 1.5))
    np.testing.assert_allclose(capped, np.clip(np.asarray(x), -1.5, 1.5) / 1.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(diffusion.dynamic_threshold(x, 99.0, 8.0)),
                               np_dynamic_threshold(np.asarray(x), 99.0), rtol=1e-6)  # the cap above s: no effect
    for bad in (0.5, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="threshold_max"):
            diffusion.dynamic_threshold(x, 99.0, bad)


def test_dynamic_threshold_zero_percentile_disables_and_bad_values_raise():
    x = 3.0 * jnp.ones((2, 4))
    assert diffusion.dynamic_threshold(x, 0.0) is x
    for bad in (-1.0, 100.5, float("nan")):
        with pytest.raises(ValueError, match=r"threshold_percentile.*\[0, 100\]"):
            diffusion.dynamic_threshold(x, bad)


def test_denoise_rederives_eps_from_the_thresholded_x0():
    """Inside the samplers: x0 is thresholded and eps follows it, so z = alpha x0 + sigma eps still holds."""
    z = 3.0 * normal(4, (2, 4, 8, 8, 3))
    logsnr = 1.5
    x0, eps = diffusion.denoise(lambda z, l: -2.0 * z, z, jnp.float32(logsnr), "v", 99.5)
    alpha, sigma = np_alpha_sigma(logsnr)
    raw_x0 = alpha * np.asarray(z) + sigma * 2.0 * np.asarray(z)  # x0 = alpha z - sigma v
    assert np.abs(raw_x0).max() > 1.5
    np.testing.assert_allclose(x0, np_dynamic_threshold(raw_x0, 99.5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alpha * np.asarray(x0) + sigma * np.asarray(eps), z, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("parameterization", ["v", "eps"])
@pytest.mark.parametrize("shape", [(4, 8, 8, 3), (4, 2, 8, 8, 3)])
def test_loss_is_zero_for_the_exact_target(parameterization, shape):
    x0 = uniform(0, shape, -1, 1)
    rng = jax.random.key(1)
    schedule = diffusion.CosineSchedule()
    noised = diffusion.noise_batch(rng, x0, schedule)  # what the loss will draw from the same rng
    alpha, sigma = (a.reshape((-1,) + (1,) * (len(shape) - 1)) for a in np_alpha_sigma(noised.logsnr))
    target = (alpha * noised.eps - sigma * x0) if parameterization == "v" else noised.eps

    def model_fn(z, logsnr):
        np.testing.assert_array_equal(z, noised.z)
        np.testing.assert_array_equal(logsnr, noised.logsnr)
        return jnp.asarray(target, jnp.float32)

    loss, logsnr = diffusion.diffusion_loss(model_fn, x0, rng, schedule, parameterization=parameterization)
    assert loss.shape == (shape[0],) and logsnr.shape == (shape[0],)
    np.testing.assert_allclose(loss, 0.0, atol=1e-10)
    np.testing.assert_allclose(noised.z, alpha * x0 + sigma * noised.eps, rtol=1e-5, atol=1e-6)
    # A wrong model gives the MSE over all non-batch axes.
    loss, _ = diffusion.diffusion_loss(
        lambda z, l: jnp.asarray(target, jnp.float32) + 0.5, x0, rng, schedule, parameterization=parameterization
    )
    np.testing.assert_allclose(loss, 0.25, rtol=1e-5)


@pytest.mark.parametrize("parameterization", ["v", "eps"])
def test_loss_of_the_optimal_denoiser_is_the_closed_form_minimum(parameterization):
    """x0 ~ N(mu, s^2): E[(x0 - E[x0|z])^2] = s^2 sigma^2 / (alpha^2 s^2 + sigma^2); the v error is
    that over sigma^2 and the eps error that times alpha^2 / sigma^2."""
    mu, s, batch = 0.7, 0.3, 64
    x0 = mu + s * normal(2, (batch, 4, 8, 8, 4))  # 1024 values per example

    def optimal(z, logsnr):
        alpha, sigma = jnp_alpha_sigma(logsnr, z.ndim)
        x0_hat = mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (z - alpha * mu)
        eps_hat = (z - alpha * x0_hat) / sigma
        return alpha * eps_hat - sigma * x0_hat if parameterization == "v" else eps_hat

    loss, logsnr = diffusion.diffusion_loss(
        optimal, x0, jax.random.key(3), diffusion.CosineSchedule(), parameterization=parameterization
    )
    alpha, sigma = np_alpha_sigma(logsnr)
    expected = s**2 / (alpha**2 * s**2 + sigma**2) * (1.0 if parameterization == "v" else alpha**2)
    ratio = np.asarray(loss, np.float64) / expected
    assert abs(ratio.mean() - 1) < 0.02, ratio.mean()  # 64 x 1024 values: std of the mean ~0.6%
    assert np.all(np.abs(ratio - 1) < 0.25), ratio


def test_low_discrepancy_times_cover_the_range_evenly():
    t = np.sort(np.asarray(diffusion.sample_times(jax.random.key(0), 16)))
    np.testing.assert_allclose(np.diff(t), 1 / 16, atol=1e-6)
    assert 0 <= t[0] < 1 / 16
    iid = np.asarray(diffusion.sample_times(jax.random.key(0), 4096, low_discrepancy=False))
    assert iid.min() >= 0 and iid.max() < 1 and abs(iid.mean() - 0.5) < 0.02


def test_loss_rejects_a_model_with_the_wrong_output_shape():
    x0 = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"model_fn returned shape \(2, 4, 4, 1\)"):
        diffusion.diffusion_loss(
            lambda z, l: z[..., :1], x0, jax.random.key(0), diffusion.CosineSchedule(), parameterization="v"
        )


# ----------------------------------------------------------------------------- guidance


def two_gaussian_model(calls):
    """Exact x0 denoisers of two different Gaussians; the conditioning's mask picks one per example."""

    def denoiser(z, logsnr, mu, s):
        alpha, sigma = jnp_alpha_sigma(logsnr, z.ndim)
        return mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (z - alpha * mu)

    def model_fn(z, logsnr, conditioning):
        calls.append(z.shape[0])
        conditional = (conditioning["mask"].sum(axis=1) > 0).reshape(-1, 1, 1, 1)
        return jnp.where(conditional, denoiser(z, logsnr, 0.7, 0.3), denoiser(z, logsnr, -0.2, 0.5))

    return model_fn


@pytest.fixture
def guidance_inputs():
    batch = 3
    z = normal(0, (batch, 6, 6, 3))
    logsnr = jnp.array([-3.0, 0.0, 4.0])
    conditioning = {"embeddings": jnp.ones((batch, 5, 8)), "mask": jnp.ones((batch, 5), jnp.int32)}
    return z, logsnr, conditioning, diffusion.null_text_conditioning(conditioning)


def test_null_text_is_all_zero(guidance_inputs):
    *_, null = guidance_inputs
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(null))
    assert null["mask"].dtype == jnp.int32 and null["embeddings"].shape == (3, 5, 8)


def test_guidance_is_the_linear_combination_in_one_batched_call(guidance_inputs):
    z, logsnr, conditioning, null = guidance_inputs
    calls = []
    model_fn = two_gaussian_model(calls)
    cond_out = model_fn(z, logsnr, conditioning)
    uncond_out = model_fn(z, logsnr, null)
    calls.clear()
    guided = jax.jit(
        lambda scale: diffusion.classifier_free_guidance(model_fn, conditioning, null, scale)(z, logsnr)
    )
    np.testing.assert_array_equal(guided(0.0), uncond_out)
    np.testing.assert_array_equal(guided(1.0), cond_out)
    for w in (0.5, 3.0, 8.0):
        np.testing.assert_allclose(guided(w), uncond_out + w * (cond_out - uncond_out), rtol=1e-5, atol=1e-5)
    assert calls == [2 * z.shape[0]]  # traced once, cond and uncond in one doubled batch


def test_static_guidance_scale_zero_or_one_runs_a_single_branch(guidance_inputs):
    z, logsnr, conditioning, null = guidance_inputs
    calls = []
    model_fn = two_gaussian_model(calls)
    np.testing.assert_array_equal(
        diffusion.classifier_free_guidance(model_fn, conditioning, null, 0)(z, logsnr), model_fn(z, logsnr, null)
    )
    np.testing.assert_array_equal(
        diffusion.classifier_free_guidance(model_fn, conditioning, null, 1.0)(z, logsnr),
        model_fn(z, logsnr, conditioning),
    )
    assert calls == [3, 3, 3, 3]


def test_guidance_rejects_a_mismatched_null(guidance_inputs):
    z, logsnr, conditioning, null = guidance_inputs
    model_fn = two_gaussian_model([])
    with pytest.raises(ValueError, match="same pytree structure"):
        diffusion.classifier_free_guidance(model_fn, conditioning, {"embeddings": null["embeddings"]}, 3.0)
    with pytest.raises(ValueError, match=r"shape \(1, 5, 8\) does not match"):
        diffusion.classifier_free_guidance(model_fn, conditioning, {**null, "embeddings": jnp.zeros((1, 5, 8))}, 3.0)


def test_text_dropout_replaces_whole_examples_with_probability_p():
    batch = 4000
    conditioning = {
        "embeddings": normal(0, (batch, 3, 4)) + 5.0,
        "mask": jnp.ones((batch, 3), jnp.int32),
    }
    null = diffusion.null_text_conditioning(conditioning)
    dropped = jax.jit(lambda rng: diffusion.drop_conditioning(rng, conditioning, null, 0.3))(jax.random.key(1))
    emb_null = np.all(np.asarray(dropped["embeddings"]) == 0, axis=(1, 2))
    mask_null = np.all(np.asarray(dropped["mask"]) == 0, axis=1)
    np.testing.assert_array_equal(emb_null, mask_null)  # embeddings and mask dropped together
    assert abs(emb_null.mean() - 0.3) < 0.03
    kept = ~emb_null
    np.testing.assert_array_equal(np.asarray(dropped["embeddings"])[kept], np.asarray(conditioning["embeddings"])[kept])
    keep_all = diffusion.drop_conditioning(jax.random.key(2), conditioning, null, 0.0)
    np.testing.assert_array_equal(keep_all["mask"], conditioning["mask"])
    drop_all = diffusion.drop_conditioning(jax.random.key(2), conditioning, null, 1.0)
    np.testing.assert_array_equal(drop_all["mask"], null["mask"])
    with pytest.raises(ValueError, match=r"p=1.5 must be a number in \[0, 1\]"):
        diffusion.drop_conditioning(jax.random.key(2), conditioning, null, 1.5)


# ----------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("shape", [(4, 16, 16, 3), (2, 4, 16, 16, 3)])
def test_noise_augment_high_logsnr_is_identity(shape):
    x = uniform(0, shape, -1, 1)
    noised, logsnr = diffusion.noise_augment(jax.random.key(1), x, 100.0)
    np.testing.assert_array_equal(noised, x)
    np.testing.assert_array_equal(logsnr, np.full(shape[0], 100.0, np.float32))


@pytest.mark.parametrize("level", [-2.0, 0.0, 3.0])
def test_noise_augment_has_the_variance_of_its_logsnr(level):
    x = jnp.full((4, 64, 64, 3), 0.5)
    noised, _ = diffusion.noise_augment(jax.random.key(2), x, level)
    alpha, sigma = np_alpha_sigma(level)
    np.testing.assert_allclose(float(noised.mean()), alpha * 0.5, atol=0.01)
    np.testing.assert_allclose(float(noised.std()), sigma, rtol=0.01)


def test_random_noise_augment_draws_one_level_per_example_in_range():
    x = uniform(3, (64, 2, 16, 16, 3), -1, 1)
    noised, logsnr = diffusion.random_noise_augment(jax.random.key(4), x, (-3.0, 6.0))
    logsnr = np.asarray(logsnr)
    assert logsnr.shape == (64,) and logsnr.min() >= -3.0 and logsnr.max() <= 6.0 and logsnr.std() > 1.0
    alpha, sigma = np_alpha_sigma(logsnr)
    alpha, sigma = alpha.reshape(-1, 1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1, 1)
    eps = (np.asarray(noised, np.float64) - alpha * np.asarray(x, np.float64)) / sigma
    np.testing.assert_allclose(eps.reshape(64, -1).std(axis=1), 1.0, atol=0.06)  # 1536 draws each
    with pytest.raises(ValueError, match="low < high"):
        diffusion.random_noise_augment(jax.random.key(4), x, (6.0, -3.0))


# ----------------------------------------------------------------------------- config bridge


def test_config_defaults_build():
    config = base_config()
    schedule = diffusion.schedule_from_config(config.diffusion)
    assert schedule == diffusion.CosineSchedule(logsnr_min=-20.0, logsnr_max=20.0, shift=1.0)
    assert diffusion.parameterization_from_config(config.diffusion) == "v"
    settings = diffusion.sampler_settings_from_config(config.sample)
    assert settings == diffusion.SamplerSettings(
        sampler="ddpm", num_steps=64, ddim_eta=0.0, guidance_scale=8.0, threshold_percentile=99.5
    )
    config.diffusion.shift = 2.0
    assert diffusion.schedule_from_config(config.diffusion).shift == 2.0


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("sample", "sampler", "euler", r"sample.sampler='euler'.*\('ddpm', 'ddim', 'dpmpp_2m'\)"),
        ("sample", "num_steps", 0, r"sample.num_steps=0 must be an integer >= 1"),
        ("sample", "threshold_percentile", 100.5, r"sample.threshold_percentile=100.5.*\[0, 100\]"),
        ("sample", "threshold_percentile", -1.0, r"sample.threshold_percentile=-1.0.*\[0, 100\]"),
        ("sample", "threshold_max", 0.5, r"sample.threshold_max=0.5 must be 0 \(no cap\) or a number >= 1"),
        ("sample", "ddim_eta", 1.5, r"sample.ddim_eta=1.5.*\[0, 1\]"),
        ("sample", "resample", 0, r"sample.resample=0 must be an integer >= 1"),
        ("sample", "guidance_scale", -1.0, r"sample.guidance_scale=-1.0.*>= 0"),
        ("diffusion", "parameterization", "x0", r"diffusion.parameterization='x0'.*\('v', 'eps'\)"),
        ("diffusion", "logsnr_min", 25.0, r"diffusion.logsnr_min=25.0 must be smaller than diffusion.logsnr_max=20.0"),
        ("diffusion", "logsnr_max", -20.0, r"diffusion.logsnr_min=-20.0 must be smaller"),
        ("diffusion", "shift", 0.0, r"diffusion.shift=0.0 must be > 0"),
        ("diffusion", "shift", -2.0, r"diffusion.shift=-2.0 must be > 0"),
    ],
)
def test_config_validation_errors(section, key, value, message):
    config = base_config()
    config[section][key] = value
    with pytest.raises(ValueError, match=message):
        if section == "sample":
            diffusion.sampler_settings_from_config(config.sample)
        else:
            diffusion.schedule_from_config(config.diffusion)
            diffusion.parameterization_from_config(config.diffusion)


def test_config_missing_key_is_named():
    config = base_config()
    del config.sample["ddim_eta"]
    with pytest.raises(ValueError, match=r"config.sample.ddim_eta is missing"):
        diffusion.sampler_settings_from_config(config.sample)
