"""The conditional tasks: the training mask mix, fine-tuning from a text-to-video export, sampling
every task from files (known pixels kept, SSR, windows), and the errors of bad requests."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import ssr_tiny
from data_pipelines.clips import resize_cover
from lumiere_jax import diffusion, parallel
from lumiere_jax.config import mask_mix_config
from lumiere_jax.models.conditioning import call_model
from lumiere_jax.models.unet import build_unet
from lumiere_jax.models.weights import load_weights
from lumiere_jax.sample import masks
from lumiere_jax.sample.inputs import read_mask, read_video
from lumiere_jax.sample.job import sample
from lumiere_jax.sample.video_io import write_lossless_video, write_mp4
from lumiere_jax.train import mask_mix
from lumiere_jax.train.checkpointing import Checkpointer
from lumiere_jax.train.trainer import build_train_state, initialize_from, restore_train_state, train
from random_arrays import normal, uniform
from sample_helpers import export_random, sample_config
from train_helpers import SyntheticBatches, moving_square_batch, train_config

T, S = 8, 16  # the tiny model's clips


def conditional_config():
    c = train_config()
    c.model.conditioning_channels = 4
    return c


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("conditional_exports")
    return {"t2v": export_random(train_config(), root / "t2v", 0),
            "cond": export_random(conditional_config(), root / "cond", 3),
            "ssr": export_random(ssr_tiny.get_config(), root / "ssr", 1)}


# -- the training mask mix -----------------------------------------------------------------------

def only(kind, **overrides):
    cfg = mask_mix_config()
    for k in mask_mix.MASK_KINDS:
        cfg[k] = 1.0 if k == kind else 0.0
    cfg.update(overrides)
    return cfg


def draw(kind, seed=0, n=16, **overrides):
    videos = uniform(99, (n, T, S, S, 3), -1, 1)
    targets, known = mask_mix.draw_conditions(jax.random.key(seed), videos, only(kind, **overrides))
    return np.asarray(videos), np.asarray(targets), np.asarray(known)


def test_every_kind_of_mask_has_its_shape():
    videos, _, known = draw("none")
    assert not known.any()
    _, _, known = draw("first_frames", max_first_frames=2)
    m = known[..., 3]
    counts = m.all(axis=(2, 3)).sum(1)
    assert set(counts) <= {1, 2} and m[:, 0].all() and (m.any(axis=(2, 3)).sum(1) == counts).all()
    for kind in ("box", "blob"):
        _, _, known = draw(kind, span_prob=0.5)
        m = known[..., 3]
        assert (m < 1).any(axis=(1, 2, 3)).all(), f"{kind}: every example has something to fill"
        holes = (m < 1).any(axis=(2, 3))
        assert (~holes).any() and holes.all(1).any(), f"{kind}: spans and whole clips both drawn"
    _, _, known = draw("border")
    m = known[..., 3]
    assert (m == m[:, :1]).all() and (m[:, 0] < 1).any(axis=(1, 2)).all()
    for mask in m[:, 0]:  # the known part is one rectangle
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_cinemagraph_examples_freeze_the_first_frame_outside_the_region():
    videos, targets, known = draw("cinemagraph")
    c, m = known[..., :3], known[..., 3]
    assert m[:, 0].all()
    outside = m[:, 1:] > 0  # (B, T-1, H, W)
    frozen = np.broadcast_to(videos[:, :1], targets[:, 1:].shape)
    np.testing.assert_array_equal(targets[:, 1:][outside], frozen[outside])
    np.testing.assert_array_equal(targets[:, 1:][~outside], videos[:, 1:][~outside])
    np.testing.assert_allclose(c, targets * m[..., None])


def test_mix_follows_its_weights_and_rejects_bad_ones():
    cfg = mask_mix_config()
    probs = np.asarray(mask_mix.mix_probabilities(cfg))
    keys = jax.random.split(jax.random.key(0), 4000)
    kinds = jax.vmap(lambda k: jax.random.choice(jax.random.split(k, 8)[0], len(probs), p=jnp.asarray(probs)))(keys)
    freq = np.bincount(np.asarray(kinds), minlength=len(probs)) / len(keys)
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(probs * (1 - probs) / len(keys)).max())
    for bad, message in (({"box": -1.0}, "must be >= 0"), ({k: 0.0 for k in mask_mix.MASK_KINDS}, "positive sum"),
                         ({"max_border": 0.5}, "max_border"), ({"box_size": (0.7, 0.2)}, "box_size")):
        c = mask_mix_config()
        c.update(bad)
        with pytest.raises(ValueError, match=message):
            mask_mix.mix_probabilities(c)


# -- fine-tuning from a text-to-video export ------------------------------------------------------

def test_conditional_model_starts_as_the_text_to_video_model(exports):
    config = conditional_config()
    conditional = build_unet(config.model, seed=7)
    assert load_weights(exports["t2v"], conditional) == "unconditional"  # what train.init_from calls
    t2v = build_unet(train_config().model, seed=7)
    assert load_weights(exports["t2v"], t2v) == "full"
    z = normal(1, (2, T, S, S, 3))
    logsnr = jnp.array([-3.0, 2.0])
    text = normal(2, (2, 8, config.model.text_dim))
    mask = jnp.ones((2, 8), bool)
    videos = uniform(3, (2, T, S, S, 3), -1, 1)
    _, known = mask_mix.draw_conditions(jax.random.key(4), videos, only("box"))
    cond = {"text": text, "mask": mask}
    want = nnx.jit(lambda m: m(z, logsnr, text, mask))(t2v)
    got = nnx.jit(lambda m: call_model(m, z, logsnr, dict(cond, known=known)))(conditional)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # the zero conv adds exactly 0, compiled too


def masked_loss(model, config, batch, known, rng):
    """The v-loss on the pixels to fill only, at fixed noise."""
    schedule = diffusion.schedule_from_config(config.diffusion)
    x0 = batch["video"]
    noised = diffusion.noise_batch(rng, x0, schedule)
    alpha, sigma = diffusion.alpha_sigma(diffusion.per_example(noised.logsnr, x0))
    target = diffusion.training_target(x0, noised.eps, alpha, sigma, "v")
    text = jnp.asarray(batch["text_embeddings"], jnp.float32)
    cond = {"text": text, "mask": batch["text_mask"], "known": known}
    out = nnx.jit(call_model)(model, noised.z, noised.logsnr, cond)  # one program, not one per op
    fill = 1.0 - known[..., 3:]
    return float((jnp.square(out - target) * fill).sum() / (fill.sum() * 3))


def test_short_fine_tune_lowers_the_loss_on_masked_targets(exports, tmp_path):
    config = conditional_config()
    config.train.num_steps, config.train.checkpoint_every, config.train.log_every = 30, 30, 10
    config.train.init_from = str(exports["t2v"])
    mesh = parallel.make_mesh(dict(config.mesh.shape))
    rules = parallel.logical_axis_rules()
    batch = moving_square_batch(1000, 8, T, S, config.text.max_length, config.model.text_dim)
    _, known = mask_mix.draw_conditions(jax.random.key(5), jnp.asarray(batch["video"]), only("box", span_prob=0.0))
    before_state = build_train_state(config, mesh, rules)
    initialize_from(before_state, config.train.init_from)
    before = masked_loss(before_state.model, config, batch, known, jax.random.key(6))
    summary = train(config, tmp_path / "run", SyntheticBatches(config, mesh, rules))
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints", config.train, {})
    after_state = nnx.merge(*restore_train_state(config, mesh, rules, ckpt, summary["step"])[:2])
    ckpt.close()
    after = masked_loss(after_state.model, config, batch, known, jax.random.key(6))
    assert after < 0.7 * before, (before, after)
    assert np.abs(np.asarray(after_state.model.cond_input.kernel[...])).max() > 0  # the new input learned


def test_other_conditioning_channel_counts_are_refused(tmp_path):
    from lumiere_jax.train.step import check_conditioning_channels

    config = train_config()
    config.model.conditioning_channels = 2
    with pytest.raises(ValueError, match="use 4 for the conditional tasks"):
        check_conditioning_channels(config)


# -- sampling every task from files ---------------------------------------------------------------

def clip_frames(seed=0, frames=T, size=S):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def task_config(tmp_path, checkpoint, task, prompts=("a red circle moving left", "a blue square moving up"), **kw):
    config = sample_config(tmp_path, checkpoint, None, prompts)
    config.sample.task = task
    config.sample.update(kw)
    return config


def load(record):
    with np.load(record["npz"]) as data:
        return data["frames"]


def test_image_to_video_keeps_frame_zero_and_records_the_input(exports, tmp_path):
    image = clip_frames(1, 1, 40)[0]
    wide = np.concatenate([image, image[:, :20]], axis=1)  # 60x40: its centre 40x40, scaled to 16x16
    Image.fromarray(wide).save(tmp_path / "wide.png")
    config = task_config(tmp_path, exports["cond"], "i2v", input=str(tmp_path / "wide.png"))
    report = sample(config, tmp_path / "out")
    expected = resize_cover(Image.fromarray(wide), S, S)
    for record in report["samples"]:
        frames = load(record)
        np.testing.assert_array_equal(frames[0], expected)
        assert frames[1:].std() > 1 and not (frames[1:] == expected).all()
        info = record["task_inputs"]
        assert info["input"]["source_size"] == [60, 40] and info["input"]["kept_source_region"] == [40, 40]
        assert len(info["files"][0]["sha256"]) == 64
    saved = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert saved["settings"]["task"] == "i2v" and saved["settings"]["task_method"] == "model"


def test_inpainting_keeps_everything_outside_the_mask_with_each_mask_form(exports, tmp_path):
    frames = clip_frames(2)
    write_lossless_video(tmp_path / "clip.mkv", frames, 16.0)
    region = np.zeros((T, S, S), bool)
    region[2:6, 4:12, 3:9] = True
    np.savez(tmp_path / "mask.npz", mask=region)
    (tmp_path / "per_frame").mkdir()
    for t in range(T):
        Image.fromarray(region[t].astype(np.uint8) * 255).save(tmp_path / "per_frame" / f"{t:02d}.png")
    lines = [{"prompt": "a red circle moving left", "input": str(tmp_path / "clip.mkv"), "mask": m}
             for m in (str(tmp_path / "mask.npz"), str(tmp_path / "per_frame"), "3,4,9,12,2,6")]
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = task_config(tmp_path, exports["cond"], "inpaint", prompts=["a red circle moving left"] * 3,
                         tasks_file=str(tmp_path / "tasks.jsonl"))
    report = sample(config, tmp_path / "out")
    for record, line in zip(report["samples"], lines):
        out = load(record)
        np.testing.assert_array_equal(out[~region], frames[~region])
        assert not np.array_equal(out[region], frames[region])
        np.testing.assert_array_equal(read_mask(line["mask"], (S, S), S, S, T), region)


def test_outpainting_places_the_video_inside_the_border(exports, tmp_path):
    small = clip_frames(3, T, 8)
    write_lossless_video(tmp_path / "small.mkv", small, 16.0)
    config = task_config(tmp_path, exports["cond"], "outpaint", prompts=["a red circle moving left"],
                         input=str(tmp_path / "small.mkv"), outpaint="4")
    out = load(sample(config, tmp_path / "out")["samples"][0])
    np.testing.assert_array_equal(out[:, 4:12, 4:12], small)
    border = np.ones((S, S), bool)
    border[4:12, 4:12] = False
    assert out[:, border].std() > 1


def test_cinemagraph_is_constant_outside_the_region_also_after_ssr(exports, tmp_path):
    image = clip_frames(4, 1, 32)[0]
    Image.fromarray(image).save(tmp_path / "still.png")
    region = np.zeros((32, 32), np.uint8)
    region[8:24, 4:20] = 255
    Image.fromarray(region).save(tmp_path / "region.png")  # the image's size: fitted with it
    config = task_config(tmp_path, exports["cond"], "cinemagraph", prompts=["a red circle moving left"],
                         input=str(tmp_path / "still.png"), mask=str(tmp_path / "region.png"))
    config.sample.ssr_checkpoint = str(exports["ssr"])  # 16 -> 32
    out = load(sample(config, tmp_path / "out")["samples"][0])
    assert out.shape == (T, 32, 32, 3)
    outside = region == 0
    np.testing.assert_array_equal(out[:, outside], np.broadcast_to(image[outside], out[:, outside].shape))
    np.testing.assert_array_equal(out[0], image)
    assert out[1:, ~outside].std() > 1


def test_windowed_conditional_sampling_of_a_longer_clip_keeps_the_known_frames(exports, tmp_path):
    frames = clip_frames(5, 2 * T)
    write_mp4(tmp_path / "long.mp4", frames, 16.0)  # H.264: the known pixels are the decoded ones
    config = task_config(tmp_path, exports["cond"], "inpaint", prompts=["a red circle moving left"],
                         input=str(tmp_path / "long.mp4"), mask="0,0,16,16,6,10", num_frames=2 * T)
    report = sample(config, tmp_path / "out")
    out = load(report["samples"][0])
    decoded = np.stack([np.asarray(f.convert("RGB")) for f in read_video(tmp_path / "long.mp4", 2 * T, 16.0)[0]])
    assert out.shape == (2 * T, S, S, 3)
    np.testing.assert_array_equal(out[:6], decoded[:6])
    np.testing.assert_array_equal(out[10:], decoded[10:])
    assert not np.array_equal(out[6:10], decoded[6:10])


def test_replacement_baseline_runs_on_a_text_to_video_checkpoint(exports, tmp_path):
    image = clip_frames(6, 1)[0]
    Image.fromarray(image).save(tmp_path / "first.png")
    config = task_config(tmp_path, exports["t2v"], "i2v", prompts=["a red circle moving left"],
                         input=str(tmp_path / "first.png"), task_method="replacement")
    out = load(sample(config, tmp_path / "out")["samples"][0])
    np.testing.assert_array_equal(out[0], image)


def test_replacement_pastes_the_known_pixels_noised_to_the_step_level():
    """A denoiser that predicts eps = 0 returns x0 = z / alpha: with replacement, the known pixels'
    last x0 is the known value plus the fresh noise of the last step, (sigma / alpha) N(0, 1)."""
    schedule = diffusion.CosineSchedule()
    values = jnp.full((1, 2, 8, 8, 3), 0.5)
    mask = jnp.zeros((1, 2, 8, 8, 1)).at[:, 0].set(1.0)
    settings = diffusion.SamplerSettings("ddim", 8, 0.0, 1.0, 0.0)
    predict = lambda z, logsnr: jnp.zeros_like(z)  # noqa: E731
    out = diffusion.sample(predict, normal(0, values.shape), jax.random.key(1), schedule,
                           settings, parameterization="eps", known=(values, mask))
    alpha, sigma = diffusion.alpha_sigma(schedule.logsnr(1 / 8))
    spread = float(sigma / alpha)
    known = np.asarray(out[:, 0])
    assert abs(known.mean() - 0.5) < 4 * spread / np.sqrt(known.size)
    assert 0.8 < known.std() / spread < 1.2
    with pytest.raises(ValueError, match="replacement of known pixels"):
        diffusion.sample(predict, values, None, schedule, settings, parameterization="eps", known=(values, mask))


# -- bad requests ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    Image.fromarray(clip_frames(7, 1, 24)[0]).save(root / "image.png")
    (root / "garbage.png").write_bytes(b"not an image at all")
    write_lossless_video(root / "clip.mkv", clip_frames(8, T, 24), 16.0)
    write_lossless_video(root / "short.mkv", clip_frames(9, 3, 24), 16.0)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "odd_mask.png")
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(root / "empty_mask.png")
    Image.fromarray(np.full((24, 24), 255, np.uint8)).save(root / "full_mask.png")
    return root


BAD = [
    ("bogus", {}, "not a task; choose one of t2v, i2v, inpaint, outpaint, cinemagraph"),
    ("i2v", {"input": "{root}/missing.png"}, "missing.png' does not exist"),
    ("i2v", {"input": "{root}/garbage.png"}, "not a readable image"),
    ("i2v", {}, "needs sample.input: an image"),
    ("inpaint", {"input": "{root}/clip.mkv"}, "needs sample.mask"),
    ("inpaint", {"input": "{root}/short.mkv", "mask": "0,0,4,4"}, "needs 8 frames = 0.50 s"),
    ("inpaint", {"input": "{root}/clip.mkv", "mask": "{root}/odd_mask.png"}, "mask .* is 10x10, but the input is 24x24"),
    ("inpaint", {"input": "{root}/clip.mkv", "mask": "{root}/empty_mask.png"}, "marks no pixel to generate"),
    ("inpaint", {"input": "{root}/clip.mkv", "mask": "{root}/full_mask.png"}, "marks every pixel of every frame"),
    ("inpaint", {"input": "{root}/clip.mkv", "mask": "0,0,40,4"}, "mask box"),
    ("outpaint", {"input": "{root}/clip.mkv", "outpaint": "8,8"}, "must be 'top,right,bottom,left'"),
    ("outpaint", {"input": "{root}/clip.mkv", "outpaint": "0"}, "adds no border"),
    ("t2v", {"input": "{root}/image.png"}, "reads none of them"),
    ("i2v", {"input": "{root}/image.png", "task_method": "bogus"}, "task_method='bogus' is not one of model"),
]


@pytest.mark.parametrize("task,settings,message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_requests_are_named(exports, bad_inputs, tmp_path, task, settings, message):
    settings = {k: v.format(root=bad_inputs) for k, v in settings.items()}
    config = task_config(tmp_path, exports["cond"], task, **settings)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        sample(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_conditional_task_needs_a_conditional_checkpoint(exports, bad_inputs, tmp_path):
    config = task_config(tmp_path, exports["t2v"], "i2v", input=str(bad_inputs / "image.png"))
    with pytest.raises(ValueError, match="needs a conditional checkpoint .* has 0.*task_method=replacement"):
        sample(config, tmp_path / "out")


def test_unknown_task_from_the_command_line(repo_root, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lumiere_jax.main", "--config=configs/stunet_tiny.py",
                           f"--workdir={tmp_path}", "--mode=sample", "--config.sample.task=animate"], cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "sample.task='animate' is not a task; choose one of t2v, i2v, inpaint, outpaint, cinemagraph" in proc.stderr


def test_video_input_is_resampled_to_the_model_fps(tmp_path):
    source = clip_frames(10, 30, 8)
    write_lossless_video(tmp_path / "25fps.mkv", source, 25.0)
    frames, info = read_video(tmp_path / "25fps.mkv", 16, 16.0)
    got = np.stack([np.asarray(f.convert("RGB")) for f in frames])
    np.testing.assert_array_equal(got, source[[k * 25 // 16 for k in range(16)]])
    assert info["source_fps"] == pytest.approx(25.0)


def test_known_input_layout_round_trips():
    video = jnp.ones((2, 3, 4, 4, 3)) * 0.3
    mask = jnp.zeros((2, 3, 4, 4)).at[:, 0].set(1)
    c, m = masks.split_known(masks.known_input(video, mask))
    np.testing.assert_allclose(c[:, 0], 0.3)
    np.testing.assert_allclose(c[:, 1:], 0.0)
    np.testing.assert_array_equal(m, mask)
