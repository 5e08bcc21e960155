"""Clips longer than the model's window (issue 21): stationary data, frame positions that agree across
windows, the window aggregations, the evaluator's seam measure, and the errors."""
import copy
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines import synthetic
from lumiere_jax import diffusion
from lumiere_jax.diffusion.multidiffusion import (AGGREGATIONS, check_window_layout, extend_windows, fixed_weights,
                                                  hann_taper, merge_windows, multidiffusion, seam_pairs,
                                                  shifted_starts, window_count, window_starts)
from lumiere_jax.evaluation import evaluate_clips
from lumiere_jax.evaluation.synthetic import seam_measures
from lumiere_jax.models.layers import sinusoidal_features
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import UNet, UNetConfig, build_unet, training_frame_starts
from lumiere_jax.sample.generate import check_long_clip, clip_model_fn, generate
from random_arrays import normal
from train_helpers import train_config

HELDOUT = "red:circle:left"
TRAIN = {"seed": 0, "split": "train", "kind": "video", "heldout": synthetic.parse_heldout(HELDOUT), "fps": 16}


def long_clip_config(position="global", frame_embedding=True, max_clip_frames=32):
    """The tests' tiny STUNet (8-frame window, time halved once) with a frame embedding."""
    c = train_config()
    c.model.temporal.frame_embedding = frame_embedding
    c.model.temporal.frame_position = position
    c.model.temporal.max_clip_frames = max_clip_frames
    return c


def tiny_model(config, seed=0):
    """Its zero-initialised output layers perturbed, so the frame embedding and the output are not 0."""
    model = build_unet(config.model, seed=seed)
    model.out_conv.kernel[...] = 0.05 * normal(seed, model.out_conv.kernel[...].shape)
    if getattr(model, "temporal_frame_embedding", None) is not None:
        out = model.temporal_frame_embedding.out.kernel
        out[...] = normal(seed + 1, out[...].shape)
    return model


# -- stationary data ---------------------------------------------------------------------------------

def test_traversal_data_is_what_it_was_before_motion_existed():
    """The default motion writes the bytes the demo checkpoints were trained on (hash of the code before
    --motion), so nothing committed changes."""
    digest = hashlib.sha256()
    for index in range(3):
        record = synthetic.make_example(index, {**TRAIN, "num_frames": 16, "sizes": [32, 64]})
        for part in (record.caption.encode(), record.frames.tobytes(), record.hires[64].tobytes(),
                     record.annotations["positions"].tobytes(), repr(sorted(record.meta.items())).encode()):
            digest.update(part)
    assert digest.hexdigest() == "12c485a9b1edf7f1cb59304e7bb69c468ae28f147adb9ac55a98790f814e61a9"


def test_stationary_clips_stay_in_the_domain_and_their_captions_hold_on_every_window():
    window, frames = 16, 64
    settings = {**TRAIN, "num_frames": frames, "sizes": [32], "motion": "stationary"}
    for index in range(12):
        record = synthetic.make_example(index, settings)
        meta, positions = record.meta, record.annotations["positions"]
        assert meta["motion"] == "stationary" and synthetic.SPEED_RANGE[0] <= meta["speed"] <= synthetic.SPEED_RANGE[1]
        assert record.caption == synthetic.caption(meta["color"], meta["shape"], meta["direction"])
        assert positions.shape == (frames, 2) and np.all((positions >= 0) & (positions < 1))
        unit = np.array(synthetic.DIRECTIONS[meta["direction"]])
        across = positions[:, 1 if unit[0] else 0]
        assert np.ptp(across) == 0 and meta["radius"] <= across[0] <= 1 - meta["radius"]  # wholly inside across
        steps = np.diff(positions, axis=0)
        steps -= np.round(steps)  # on the torus
        np.testing.assert_allclose(steps, np.tile(meta["speed"] * unit, (frames - 1, 1)), atol=1e-5)
        for start in range(0, frames - window + 1):  # every window: along the caption, never across the frame
            travel = steps[start:start + window - 1].sum(0)
            assert np.dot(travel, unit) > 0 and np.hypot(*travel) < 0.5
        # The shape is whole on the torus: as many pixels lit as the same shape at the same sub-pixel phase
        # drawn whole, a whole number of pixels away from the borders.
        centred = positions - np.floor(positions * 32) / 32 + 0.5
        whole = synthetic.render((meta["color"], meta["shape"], None), centred, meta["radius"], 32)
        np.testing.assert_array_equal((record.frames.max(-1) > 0).sum((1, 2)), (whole.max(-1) > 0).sum((1, 2)))


def test_the_evaluator_reads_wrapping_motion_and_every_window_of_it():
    """Long held-out stationary clips and 16-frame windows of them score right with eval.motion=stationary;
    read as traversals, a wrap looks like a jump backwards."""
    settings = {**TRAIN, "split": "heldout", "num_frames": 40, "sizes": [32], "motion": "stationary",
                "heldout": synthetic.parse_heldout("*:circle:*")}
    records = [synthetic.make_example(i, settings) for i in range(3)]
    clips, prompts = np.stack([r.frames for r in records]), [r.caption for r in records]
    report = evaluate_clips(clips, prompts, progress=False, motion="stationary")["overall"]
    assert report["direction_accuracy"] == 1.0 and report["presence_rate"] == 1.0
    assert report["color_accuracy"] == 1.0 and report["trajectory_jitter"] < 0.03
    windows = np.concatenate([clips[:, s:s + 16] for s in (0, 24)])
    assert evaluate_clips(windows, prompts * 2, progress=False, motion="stationary")["overall"]["direction_accuracy"] == 1.0
    wrapped = [r for r in records if np.abs(np.diff(r.annotations["positions"], axis=0)).max() > 0.5]
    assert wrapped  # some clip wraps within its 40 frames
    as_traversal = evaluate_clips(clips, prompts, progress=False)["overall"]
    assert as_traversal["direction_accuracy"] < 1 and as_traversal["presence_rate"] < 1


# -- frame positions ---------------------------------------------------------------------------------

def frame_embeddings(model, starts, frames):
    """What the model's forward pass adds to every frame's embedding at each level, for windows of
    `frames` frames at `starts` of a long clip and one caption: {level frames: (windows, frames, emb)}."""
    module = model.temporal_frame_embedding
    pooled = normal(1, (1, module.text.in_features)).repeat(len(starts), axis=0)
    first = jnp.asarray(starts, jnp.int32) if model.cfg.temporal_frame_position == "global" else None
    levels = sorted({shape["frames"] for shape in model.cfg.level_shapes(frames, 16)})
    return {n: model.frame_embedding(pooled, n, frames, first) for n in levels}


def disagreement(embeddings, starts, frames):
    """Largest difference between the embeddings two windows give one frame (at every level)."""
    worst = 0.0
    for n, emb in embeddings.items():
        factor = frames // n
        by_frame = {}
        for w, start in enumerate(starts):
            for j in range(n):
                by_frame.setdefault(start // factor + j, []).append(emb[w, j])
        assert any(len(v) > 1 for v in by_frame.values())  # the windows overlap at this level
        worst = max(worst, max(float(jnp.abs(jnp.stack(v) - v[0]).max()) for v in by_frame.values()))
    return worst


@pytest.fixture(scope="module")
def positioned():
    """The tiny STUNet with a frame embedding, counting frames per window ('clip') and from the long
    clip's start ('global'): the same weights."""
    return {position: tiny_model(long_clip_config(position)) for position in ("clip", "global")}


def test_a_frame_gets_the_same_position_in_every_window_that_holds_it(positioned):
    starts = (0, 2, 4, 6)  # 8-frame windows of a 14-frame clip, on the model's 2-frame grid
    embeddings = frame_embeddings(positioned["global"], starts, 8)
    assert sorted(embeddings) == [4, 8]  # both levels of the tiny STUNet
    assert disagreement(embeddings, starts, 8) < 1e-5
    counted_per_window = frame_embeddings(positioned["clip"], starts, 8)
    assert disagreement(counted_per_window, starts, 8) > 1e-2  # what 'clip' positions do, and why they must not


def test_global_positions_at_start_zero_are_the_clip_positions(positioned):
    clip, counted = positioned["clip"], positioned["global"]
    pooled = normal(3, (2, clip.temporal_frame_embedding.text.in_features))
    for frames in (8, 4):
        np.testing.assert_array_equal(counted.frame_embedding(pooled, frames, 8, jnp.zeros(2, jnp.int32)),
                                      clip.frame_embedding(pooled, frames, 8))
    with pytest.raises(ValueError, match="frame_start is read only by model.temporal.frame_position='global'"):
        clip(jnp.zeros((2, 8, 16, 16, 3)), jnp.zeros(2), frame_start=jnp.zeros(2))


def test_sinusoid_features_tell_positions_of_long_clips_apart():
    """Positions up to 16 training lengths (256 frames of 16) stay distinct and ordered in feature space."""
    positions = (jnp.arange(256) + 0.5) / 16
    features = sinusoidal_features(positions, 32)
    gaps = jnp.linalg.norm(features[1:] - features[:-1], axis=-1)
    distance = jnp.linalg.norm(features[:, None] - features[None], axis=-1) + jnp.eye(256) * 1e9
    assert float(distance.min()) >= 0.5 * float(gaps.min()) > 0


def test_training_draws_window_starts_on_the_grid_up_to_the_longest_clip():
    cfg = UNetConfig.from_config(long_clip_config("global", max_clip_frames=32).model)
    starts = np.asarray(training_frame_starts(cfg, jax.random.key(0), 4096, 8))
    assert set(starts.tolist()) == set(range(0, 32 - 8 + 1, 2))  # multiples of 2, the clip inside 32 frames
    assert training_frame_starts(UNetConfig.from_config(long_clip_config("clip").model), jax.random.key(0), 4, 8) is None
    short = UNetConfig.from_config(long_clip_config("global", max_clip_frames=0).model)
    assert training_frame_starts(short, jax.random.key(0), 4, 8) is None


# -- aggregation -------------------------------------------------------------------------------------

def test_shifted_tilings_move_cover_the_clip_and_stay_on_the_grid():
    frames, window, overlap = 40, 8, 2
    seen = set()
    for logsnr in np.linspace(-10, 10, 24):
        starts, keep = (np.asarray(a) for a in shifted_starts(jnp.float32(logsnr), frames, window, overlap, align=2))
        assert len(starts) == window_count(frames, window, overlap, "shifted") and np.all(starts % 2 == 0)
        covered = np.zeros(frames, int)
        for s, k in zip(starts, keep):
            covered[s:s + window] += int(k)
        assert covered.min() >= 1 and starts[keep > 0].tolist() == sorted(set(starts.tolist()))
        seen.add(int(starts[1]))
    assert len(seen) == 3  # every offset on the grid of the 6-frame stride is used


def test_windows_of_a_framewise_model_equal_whole_clip_sampling_for_every_aggregation():
    """DDPM, an ancestral step (where averaging after the step instead of before would show), for the
    per-step aggregations; DDIM for extend, whose windows draw their own replacement noise."""
    config = train_config()
    config.model.temporal.enabled = False  # the tiny model, frame-wise
    config.sample.guidance_scale, config.sample.threshold_percentile = 2.0, 0.0
    model = tiny_model(config)
    cond = {"text": normal(5, (1, 4, 32)), "mask": jnp.ones((1, 4), bool)}
    noise = normal(6, (1, 12, 16, 16, 3))
    per_step = [a for a in AGGREGATIONS if a != "extend"]
    configs = {}
    for sampler in ("ddpm", "ddim"):
        configs[sampler] = copy.deepcopy(config)
        configs[sampler].sample.sampler = sampler

    @jax.jit  # one program for all: a fraction of the compile time of one each
    def run(n):
        def sample(window, aggregation, sampler):
            return generate(model, cond, n, jax.random.key(7), configs[sampler], num_steps=2, window=window,
                            overlap=2, aggregation=aggregation)

        return ([sample(None, "average", "ddpm")] + [sample(4, a, "ddpm") for a in per_step],
                [sample(None, "average", "ddim"), sample(4, "extend", "ddim")])

    (whole, *windowed), (whole_ddim, extended) = run(noise)
    for aggregation, clip in zip(per_step, windowed):
        np.testing.assert_allclose(clip, whole, atol=2e-5, err_msg=aggregation)
    np.testing.assert_allclose(extended, whole_ddim, atol=2e-5, err_msg="extend")


def test_a_global_position_stunet_samples_long_clips_in_shifted_windows(positioned):
    """The windowed path of the real STUNet tells every window its first frame, here from the traced
    starts of the shifted tiling (the fixed tilings pass Python ints the same way)."""
    config = long_clip_config("global")
    config.sample.sampler, config.sample.threshold_percentile = "ddim", 0.0
    model = positioned["global"]
    cond = {"text": normal(5, (1, 4, 32)), "mask": jnp.ones((1, 4), bool)}
    noise = normal(6, (1, 16, 16, 16, 3))
    seen = []
    original = type(model).__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("frame_start"))
        return original(self, *args, **kwargs)

    type(model).__call__ = spy
    try:
        out = jax.jit(lambda n: generate(model, cond, n, jax.random.key(7), config, num_steps=1, window=8,
                                         overlap=4, aggregation="shifted"))(noise)
    finally:
        type(model).__call__ = original
    assert out.shape == noise.shape and bool(jnp.isfinite(out).all())
    assert len(seen) == 1 and seen[0].shape == (2 * window_count(16, 8, 4, "shifted"),)  # both guidance rows


def test_a_global_position_stunet_extends_a_clip_from_its_first_window(positioned):
    """Aggregation 'extend' on the real STUNet: the clip's first window is that window sampled alone,
    and every later window adds frames (the clip is whole and finite); with known pixels it refuses."""
    config = long_clip_config("global")
    config.sample.sampler, config.sample.threshold_percentile = "ddim", 0.0
    model = positioned["global"]
    cond = {"text": normal(5, (1, 4, 32)), "mask": jnp.ones((1, 4), bool)}
    noise = normal(6, (1, 16, 16, 16, 3))
    rng = jax.random.key(7)
    extended, alone = jax.jit(lambda n: (
        generate(model, cond, n, rng, config, num_steps=2, window=8, overlap=4, aggregation="extend"),
        generate(model, cond, n[:, :8], jax.random.fold_in(rng, 0), config, num_steps=2)))(noise)
    np.testing.assert_allclose(extended[:, :8], alone, atol=1e-5)
    assert bool(jnp.isfinite(extended).all()) and float(jnp.abs(extended[:, 8:]).min()) > 0
    known = jnp.zeros(noise.shape[:-1] + (4,))
    with pytest.raises(ValueError, match="'extend' makes text-to-video clips"):
        generate(model, cond, noise, rng, config, window=8, overlap=4, aggregation="extend", known=known,
                 replacement=True)


def test_the_compile_reports_denoising_step_of_extend_is_one_windows_step():
    """--mode=compile_report's denoise_step for extend traces one window's guided step (what extend runs
    per model call), sampled once per window of the tiling; average's step covers the clip's windows at once."""
    from lumiere_jax import parallel
    from lumiere_jax.sample.denoise_program import denoise_program

    config = long_clip_config("global")
    config.sample.num_frames, config.sample.window_overlap = 16, 4
    mesh, rules = parallel.make_mesh({"data": -1}), parallel.logical_axis_rules()
    steps = {}
    for aggregation in ("average", "extend"):
        config.sample.window_aggregation = aggregation
        program = denoise_program(config, mesh, rules, batch_size=8)
        out = jax.eval_shape(program.fn, *program.args)  # traced, not compiled
        steps[aggregation] = (program.frames, program.windows, program.passes, out.shape[1])
    windows = window_count(16, 8, 4, "average")  # 3; extend samples the same 3 windows in turn
    assert steps == {"average": (16, windows, 1, 16), "extend": (8, 1, windows, 8)}


def test_taper_weights_each_window_down_towards_its_edges_and_sums_evenly():
    """The Hann taper's closed form; four windows over every interior frame (stride W/4) sum to 2 (the
    tapers' cosines cancel), and the merge is the weighted average it says."""
    taper = hann_taper(8)
    np.testing.assert_allclose(taper, np.sin(np.pi * (np.arange(8) + 0.5) / 8) ** 2, rtol=1e-6)
    assert taper.min() > 0 and np.allclose(taper, taper[::-1]) and taper[0] < 0.05 < 0.95 < taper[3]
    starts = window_starts(32, 8, 6)
    weights = fixed_weights(starts, 8, 32, "taper")
    total = np.zeros(32)
    for s, w in zip(starts, weights):
        total[s:s + 8] += w
    np.testing.assert_allclose(total[6:-6], 2.0, rtol=1e-5)
    values = np.random.default_rng(0).normal(size=(len(starts), 1, 8, 1)).astype(np.float32)
    merged = np.asarray(merge_windows(jnp.asarray(values.reshape(-1, 8, 1)), starts, 32, weights))[0, :, 0]
    expected = np.zeros(32)
    for i, (s, w) in enumerate(zip(starts, weights)):
        expected[s:s + 8] += w * values[i, 0, :, 0]
    np.testing.assert_allclose(merged, expected / total, rtol=1e-5, atol=1e-6)


def smooth_tracks(frames, window, aggregation, tracks=48, length_scale=5.0, steps=16):
    """Centroid-like (x, y) tracks sampled under the smooth-video prior of tests/test_multidiffusion.py,
    in windows put together by `aggregation`: (tracks, frames, 2)."""
    t = np.arange(window)
    cov = np.exp(-((t[:, None] - t[None, :]) ** 2) / length_scale**2) + 1e-4 * np.eye(window)

    def predict(z, logsnr):  # z: (B, W, 2): the exact v-prediction of that Gaussian prior
        alpha, sigma = diffusion.alpha_sigma(logsnr)
        gain = jax.vmap(lambda a, s: a * cov @ jnp.linalg.inv(a**2 * cov + s**2 * jnp.eye(window)))(alpha, sigma)
        x0 = jnp.einsum("bij,bjp->bip", gain, z)
        a, s = alpha[:, None, None], sigma[:, None, None]
        return a * (z - a * x0) / s - s * x0

    settings = diffusion.SamplerSettings(sampler="dpmpp_2m", num_steps=steps, ddim_eta=0.0, guidance_scale=1.0,
                                         threshold_percentile=0.0)
    noise = normal(3, (tracks, frames, 2))
    run = functools.partial(diffusion.sample, schedule=diffusion.CosineSchedule(), settings=settings,
                            parameterization="v")
    if aggregation == "extend":
        return np.asarray(extend_windows(lambda n, known, start, i: run(predict, n, jax.random.fold_in(
            jax.random.key(4), i), known=known), noise, window, 2))
    md = multidiffusion(lambda z, l, f, e: predict(z, l), frames, window, 2, aggregation=aggregation)
    return np.asarray(run(lambda z, l: md(z, l, {}, {}), noise, jax.random.key(4)))


def test_the_seam_measure_of_independent_windows_exceeds_the_aggregated_ones():
    frames, window, size = 22, 8, 1000  # tracks in frame widths of a large frame: no pixel floor
    ratios = {}
    for aggregation in AGGREGATIONS:
        pairs = seam_pairs(frames, window, 2, aggregation)
        measures = [seam_measures([list(p) for p in track * 0.05], pairs, size, wrap=False)
                    for track in smooth_tracks(frames, window, aggregation)]
        ratios[aggregation] = np.mean([m["seam_ratio"] for m in measures])
    aggregated = [ratios[a] for a in AGGREGATIONS if a != "independent"]
    assert ratios["independent"] > 1.5 * max(aggregated), ratios
    assert ratios["taper"] < 0.9 * ratios["average"], ratios  # 1.83 against 2.32: no step where a window enters


def test_seam_measure_of_a_clip_with_a_jump_at_a_window_boundary():
    settings = {**TRAIN, "num_frames": 32, "sizes": [32], "motion": "stationary"}
    record = synthetic.make_example(1, settings)
    layout = {"window": 16, "overlap": 8, "aggregation": "average"}
    clean = evaluate_clips(record.frames[None], [record.caption], progress=False, motion="stationary",
                           layout=layout)["clips"][0]["seams"]
    assert clean["seam_ratio"] <= 1.0
    jumped = record.frames.copy()
    boundary = seam_pairs(32, 16, 8, "average")[0] + 1
    jumped[boundary:] = np.roll(jumped[boundary:], 6, axis=(1, 2))  # 6 px down and right from this frame on
    report = evaluate_clips(jumped[None], [record.caption], progress=False, motion="stationary", layout=layout)
    jump = report["clips"][0]["seams"]["seam_ratio"]
    assert jump > 5 and report["overall"]["clips_with_seams"] == 1
    # Over clips: the mean, the worst, and the median (the typical clip's; one far jump pulls the mean).
    three = evaluate_clips(np.stack([record.frames, jumped, record.frames]), [record.caption] * 3, progress=False,
                           motion="stationary", layout=layout)["overall"]
    assert three["worst_seam_ratio"] == jump and three["median_seam_ratio"] == clean["seam_ratio"]
    assert np.isclose(three["seam_ratio"], (2 * clean["seam_ratio"] + jump) / 3)
    assert "seams" not in evaluate_clips(record.frames[None, :16], [record.caption], progress=False,
                                         layout=layout)["clips"][0]  # a clip that fits one window has none


# -- errors ------------------------------------------------------------------------------------------

def test_long_clips_from_models_that_count_frames_per_window_are_refused(positioned):
    clip_positions = UNetConfig.from_config(long_clip_config("clip").model)
    with pytest.raises(ValueError, match="frame_position='global'.*configs/demo_long.py"):
        check_long_clip(clip_positions, 16, 8, 2)
    check_long_clip(clip_positions, 8, 8, 2)  # one window: fine
    frame_wise = UNetConfig.from_config(long_clip_config("clip").model)
    frame_wise = UNetConfig(**{**frame_wise.__dict__, "temporal": False})
    check_long_clip(frame_wise, 16, 8, 2)
    check_long_clip(UNetConfig.from_config(long_clip_config("clip", frame_embedding=False).model), 16, 8, 2)
    model = positioned["clip"]
    clip_model_fn(model, 16, 8, 2, image_mode=True)  # temporal modules bypassed: allowed
    with pytest.raises(ValueError, match="sample.num_frames=16 is longer"):
        clip_model_fn(model, 16, 8, 2)


def test_window_layouts_that_do_not_work_say_which_do():
    cfg = UNetConfig.from_config(long_clip_config("global", max_clip_frames=32).model)
    with pytest.raises(ValueError, match=r"sample.window_overlap=3: windows must start on multiples of 2.*\[0, 2, 4, 6\]"):
        check_long_clip(cfg, 16, 8, 3)
    with pytest.raises(ValueError, match="sample.num_frames=17: .* multiple of 2 .* e.g. 16 or 18"):
        check_long_clip(cfg, 17, 8, 2)
    with pytest.raises(ValueError, match="clips of up to 32 frames .*max_clip_frames >= 40"):
        check_long_clip(cfg, 40, 8, 2)
    with pytest.raises(ValueError, match=r"sample.window_overlap=8 must be in \[0, 8\).* at most 7"):
        check_window_layout(16, 8, 8, names=("sample.num_frames", "sample.window_overlap"))
    with pytest.raises(ValueError, match="sample.num_frames=6 is shorter than the model's 8-frame window; use 8"):
        check_window_layout(6, 8, 2, names=("sample.num_frames", "sample.window_overlap"))
    with pytest.raises(ValueError, match="'blend' is not one of average, taper, independent, shifted, extend"):
        check_long_clip(cfg, 16, 8, 2, "blend")


def test_the_train_step_shows_each_clip_at_a_random_start_of_a_long_clip():
    """Traced, not compiled: the model is called with each example's drawn start under 'global'
    positions with a longest clip, and without one otherwise."""
    from lumiere_jax.train.optimizer import learning_rate_schedule, make_optimizer
    from lumiere_jax.train.state import TrainState
    from lumiere_jax.train.step import make_train_step

    batch = {"video": jnp.zeros((8, 8, 16, 16, 3)), "text_embeddings": jnp.ones((8, 8, 32)),
             "text_mask": jnp.ones((8, 8), bool)}
    seen = []
    original = UNet.__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("frame_start"))
        return original(self, *args, **kwargs)

    UNet.__call__ = spy
    try:
        config = long_clip_config("global", max_clip_frames=32)
        state = nnx.eval_shape(lambda: TrainState(UNet(UNetConfig.from_config(config.model), rngs=Rngs(0)),
                                                  make_optimizer(config.train), config.train.trainable))
        graphdef, state = nnx.split(state)
        jax.eval_shape(make_train_step(graphdef, config, learning_rate_schedule(config.train)), state, batch)
    finally:
        UNet.__call__ = original
    assert seen[0].shape == (8,) and seen[0].dtype == jnp.int32  # 'clip' positions: training_frame_starts is None


def test_the_sampling_job_refuses_before_building_and_the_evaluator_reads_its_layout(positioned, tmp_path):
    """The job's checks run on the export's config before any model is built; an evaluation of long
    clips reads the window layout the job wrote into samples.json and reports their seams."""
    import json

    from lumiere_jax.evaluation import evaluate_samples, summary
    from lumiere_jax.models.weights import save_weights
    from lumiere_jax.sample.job import sample
    from sample_helpers import sample_config

    base = tmp_path / "clip_positions"
    save_weights(base, nnx.state(positioned["clip"], nnx.Param), json.loads(long_clip_config("clip").to_json()))
    config = sample_config(tmp_path, base, None)
    config.sample.num_frames = 16
    with pytest.raises(ValueError, match="sample.num_frames=16 is longer than the model's 8-frame window"):
        sample(config, tmp_path / "out")
    config.sample.num_frames, config.sample.image_mode = 8, False
    config.sample.window_aggregation = "blend"
    with pytest.raises(ValueError, match="'blend' is not one of"):
        sample(config, tmp_path / "out")
    extended = tmp_path / "global_positions"
    save_weights(extended, nnx.state(positioned["global"], nnx.Param), json.loads(long_clip_config().to_json()))
    config = sample_config(tmp_path, extended, None)
    config.sample.num_frames, config.sample.window_overlap, config.sample.window_aggregation = 16, 4, "extend"
    config.sample.task, config.sample.input = "edit", str(tmp_path / "clip.mp4")  # refused before it is read
    with pytest.raises(ValueError, match="'extend' makes text-to-video clips; sample.task='edit'"):
        sample(config, tmp_path / "out")

    workdir = tmp_path / "long"
    workdir.mkdir()
    settings = {**TRAIN, "num_frames": 32, "sizes": [32], "motion": "stationary"}
    records = [synthetic.make_example(i, settings) for i in range(2)]
    for i, record in enumerate(records):
        np.savez_compressed(workdir / f"{i}.npz", frames=record.frames)
    layout = {"window": 16, "overlap": 8, "aggregation": "shifted"}
    (workdir / "samples.json").write_text(json.dumps({
        "samples": [{"prompt": r.caption, "npz": str(workdir / f"{i}.npz")} for i, r in enumerate(records)],
        "settings": {}, "windows": layout}))
    report = evaluate_samples(workdir, progress=False, motion="stationary")
    assert report["windows"] == layout and report["overall"]["clips_with_seams"] == 2
    assert report["overall"]["worst_seam_ratio"] <= 1.0 and report["overall"]["direction_accuracy"] == 1.0
    assert "seams (2 clips, 16-frame windows, overlap 8, shifted)" in summary(report)
    with pytest.raises(ValueError, match="lacks \\['aggregation'\\]"):
        evaluate_samples(workdir, progress=False, layout={"window": 16, "overlap": 8})
