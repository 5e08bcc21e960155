"""Temporal MultiDiffusion: the least-squares aggregation, equivalence for frame-wise models, seams."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumiere_jax import diffusion
from lumiere_jax.diffusion.multidiffusion import merge_windows, multidiffusion, split_windows, window_starts
from random_arrays import normal


def test_window_starts_cover_the_clip_with_the_overlap():
    assert window_starts(80, 16, 2) == (0, 14, 28, 42, 56, 64)
    assert window_starts(16, 16, 2) == (0,)
    assert window_starts(10, 4, 2) == (0, 2, 4, 6)
    with pytest.raises(ValueError, match="shorter than the model's 16-frame window"):
        window_starts(8, 16, 2)
    with pytest.raises(ValueError, match="overlap=4"):
        window_starts(16, 4, 4)


def test_aggregation_is_the_least_squares_solution():
    frames, window, overlap = 11, 4, 2
    starts = window_starts(frames, window, overlap)
    rng = np.random.default_rng(0)
    predictions = rng.normal(size=(len(starts), window, 3))  # one example, 3 values per frame
    # argmin_J sum_i ||S_i J - P_i||^2 with S_i selecting window i's frames, solved directly
    selection = np.zeros((len(starts) * window, frames))
    for i, s in enumerate(starts):
        selection[i * window + np.arange(window), s + np.arange(window)] = 1.0
    solution, *_ = np.linalg.lstsq(selection, predictions.reshape(-1, 3), rcond=None)
    merged = merge_windows(jnp.asarray(predictions, jnp.float32), starts, frames)[0]  # (n*B, W, 3), B = 1
    np.testing.assert_allclose(merged, solution, atol=1e-5)


def test_split_and_merge_round_trip_and_windows_go_in_one_call():
    x = normal(0, (2, 10, 3))
    calls = []

    def window_fn(z, logsnr, frame_cond, example_cond):
        calls.append(z.shape)
        return z + frame_cond["f"] + example_cond["e"][:, None, None]

    fn = multidiffusion(window_fn, 10, 4, 2)
    out = fn(x, jnp.zeros(2), {"f": 2 * x}, {"e": jnp.array([1.0, -1.0])})
    np.testing.assert_allclose(out, 3 * x + jnp.array([1.0, -1.0])[:, None, None], atol=1e-6)
    assert calls == [(8, 4, 3)]  # 4 windows x 2 examples, one batched call
    np.testing.assert_array_equal(split_windows(x, (0, 6), 4)[2:], x[:, 6:10])


@pytest.mark.parametrize("aggregation, windows", [("average", 4), ("independent", 3), ("shifted", 5)])
def test_windows_in_sequence_give_the_batched_predictions_one_window_per_call(aggregation, windows):
    """A window function that mixes frames, conditioning, the noise level and the window's first frame,
    so that a window given another window's frames, conditioning, level or start would show."""
    x = normal(1, (2, 11, 3))
    logsnr = jnp.array([0.5, -2.0])
    calls = []

    def window_fn(z, logsnr_w, frame_cond, example_cond):
        calls.append(z.shape)
        mixed = jnp.cumsum(z, axis=1) * jnp.tanh(frame_cond["f"])
        shift = logsnr_w + 0.1 * example_cond["start"]
        return mixed * example_cond["e"][:, None, None] + shift[:, None, None]

    args = (x, logsnr, {"f": x[..., ::-1]}, {"e": jnp.array([1.5, -0.5])})
    build = lambda seq: multidiffusion(window_fn, 11, 4, 1, in_sequence=seq, aggregation=aggregation,  # noqa: E731
                                       start_key="start")
    batched = build(False)(*args)
    in_sequence = jax.jit(lambda *a: build(True)(*a))(*args)
    np.testing.assert_allclose(in_sequence, batched, rtol=1e-6, atol=1e-6)
    # all windows in one call; then one window (2 examples) per call
    assert calls == [(2 * windows, 4, 3), (2, 4, 3)]


def test_each_aggregation_takes_a_frame_from_the_windows_it_should():
    """A window predicts its own first frame everywhere: average gives each frame the mean start of the
    windows covering it, independent the start of the one window it is taken from (the last)."""
    def window_fn(z, logsnr, frame_cond, example_cond):
        return jnp.broadcast_to(example_cond["start"].astype(z.dtype)[:, None, None], z.shape)

    z = jnp.zeros((1, 10, 1))
    average = multidiffusion(window_fn, 10, 4, 2, start_key="start")(z, jnp.zeros(1), {}, {})[0, :, 0]
    np.testing.assert_allclose(average, [0, 0, 1, 1, 3, 3, 5, 5, 6, 6])  # windows at 0, 2, 4, 6
    independent = multidiffusion(window_fn, 10, 4, 2, aggregation="independent", start_key="start")
    np.testing.assert_array_equal(independent(z, jnp.zeros(1), {}, {})[0, :, 0], [0, 0, 0, 0, 4, 4, 6, 6, 6, 6])


def framewise_denoiser(mu=0.3, s=0.5):
    """The exact v-prediction of a model acting frame by frame on N(mu, s^2) data."""
    def predict(z, logsnr):
        alpha, sigma = diffusion.alpha_sigma(diffusion.per_example(logsnr, z))
        x0 = mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (z - alpha * mu)
        eps = (z - alpha * x0) / sigma
        return alpha * eps - sigma * x0
    return predict


def sample_with(predict, noise, rng, steps=32, sampler="ddpm"):
    settings = diffusion.SamplerSettings(sampler=sampler, num_steps=steps, ddim_eta=0.0, guidance_scale=1.0,
                                         threshold_percentile=0.0)
    return diffusion.sample(predict, noise, rng, diffusion.CosineSchedule(), settings, parameterization="v")


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m"])
def test_framewise_model_samples_the_same_with_and_without_windows(sampler):
    noise = normal(1, (3, 12, 4, 4, 1))
    predict = framewise_denoiser()
    whole = sample_with(predict, noise, jax.random.key(2), sampler=sampler)
    windowed = multidiffusion(lambda z, l, f, e: predict(z, l), 12, 4, 2)
    stitched = sample_with(lambda z, l: windowed(z, l, {}, {}), noise, jax.random.key(2), sampler=sampler)
    np.testing.assert_allclose(stitched, whole, atol=1e-5)


def smooth_prior_denoiser(window, length_scale=3.0):
    """Exact v-prediction for data that is a smooth Gaussian process over a window's frames."""
    t = np.arange(window)
    cov = np.exp(-((t[:, None] - t[None, :]) ** 2) / length_scale**2) + 1e-4 * np.eye(window)

    def predict(z, logsnr):  # z: (B, W, P)
        alpha, sigma = diffusion.alpha_sigma(logsnr)
        gain = jax.vmap(lambda a, s: a * cov @ jnp.linalg.inv(a**2 * cov + s**2 * jnp.eye(window)))(alpha, sigma)
        x0 = jnp.einsum("bij,bjp->bip", gain, z)
        a, s = alpha[:, None, None], sigma[:, None, None]
        eps = (z - a * x0) / s
        return a * eps - s * x0
    return predict


@pytest.mark.parametrize("sampler, steps", [("ddpm", 64), ("dpmpp_2m", 16)])
def test_independent_windows_leave_seams_that_multidiffusion_removes(sampler, steps):
    frames, window, overlap, pixels = 22, 8, 2, 256
    starts = window_starts(frames, window, overlap)
    predict = smooth_prior_denoiser(window)
    noise = normal(3, (1, frames, pixels))
    rng = jax.random.key(4)

    md = multidiffusion(lambda z, l, f, e: predict(z, l), frames, window, overlap)
    joint = sample_with(lambda z, l: md(z, l, {}, {}), noise, rng, steps=steps, sampler=sampler)[0]

    # Independent windows: each sampled alone; each frame is taken from the last window covering it.
    separate = np.zeros((frames, pixels))
    for i, s in enumerate(starts):
        clip = sample_with(predict, noise[:, s:s + window], jax.random.fold_in(rng, i), steps=steps, sampler=sampler)[0]
        separate[s:s + window] = clip

    boundaries = {s - 1 for s in starts[1:]}  # frame pairs (b, b+1) where the source window changes

    def jumps(video):
        diff = np.sqrt(np.mean(np.diff(np.asarray(video), axis=0) ** 2, axis=1))
        at = np.mean([diff[b] for b in boundaries])
        inside = np.mean([diff[i] for i in range(frames - 1) if i not in boundaries])
        return at / inside

    assert jumps(separate) > 2.0  # a visible seam at every window boundary
    assert jumps(joint) < 1.3  # MultiDiffusion: boundaries look like the inside of a window
