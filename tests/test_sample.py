"""The sampling job end to end on tiny exported models, and its up-front checks."""
import dataclasses
import json
import pathlib

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import ssr_tiny
from lumiere_jax.models.param_groups import TEMPORAL
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import build_unet
from lumiere_jax.parallel.mesh import DEFAULT_RULES
from lumiere_jax.sample.generate import generate
from lumiere_jax.sample.job import sample
from jax_events import jax_events
from random_arrays import normal
from sample_helpers import export_random, sample_config
from train_helpers import train_config


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    base = export_random(train_config(), root / "base", 0)  # 8 frames of 16x16
    ssr = export_random(ssr_tiny.get_config(), root / "ssr", 1)  # 16 -> 32, windows of 4
    return base, ssr


def test_an_export_is_restored_into_its_sharding_without_initialising(exports):
    """`restore_model` (how the sampling job builds its models) gives what initialising and then
    `load_weights` gives, bit for bit and in the same shardings, without compiling anything; an
    export of another model is refused by name."""
    from lumiere_jax import parallel
    from lumiere_jax.models.unet import UNet, UNetConfig
    from lumiere_jax.models.weights import load_weights, restore_model

    base, ssr = exports
    config = train_config()
    mesh, rules = parallel.make_mesh({"data": 2, "fsdp": 4}), parallel.logical_axis_rules()
    cfg = UNetConfig.from_config(config.model)
    unet = lambda key: UNet(cfg, rngs=Rngs(key))  # noqa: E731
    with jax_events() as events:
        restored = restore_model(base, unet, mesh, rules)
    assert "/jax/core/compile/backend_compile_duration" not in events
    loaded = build_unet(config.model, mesh=mesh, rules=rules)
    assert load_weights(base, loaded) == "full"
    restored, loaded = nnx.to_flat_state(nnx.state(restored)), nnx.to_flat_state(nnx.state(loaded))
    assert [p for p, _ in restored] == [p for p, _ in loaded]
    for (path, a), (_, b) in zip(restored, loaded):
        assert a.get_value().sharding == b.get_value().sharding, path
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path))
    assert any(not v.get_value().sharding.is_fully_replicated for _, v in restored)  # fsdp-sharded ones too
    single = restore_model(base, unet)
    assert nnx.state(single, nnx.Param).out_conv.kernel.get_value().devices() == {jax.devices()[0]}
    with pytest.raises(ValueError, match=r"weights at .*ssr do not fit this model: missing \['"):
        restore_model(ssr, unet)
    wider = dataclasses.replace(cfg, base_channels=2 * cfg.base_channels)
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \[\], misshapen \['.*: \(\d+"):
        restore_model(base, lambda key: UNet(wider, rngs=Rngs(key)))  # the same names, other widths
    with pytest.raises(FileNotFoundError, match="no exported weights at"):
        restore_model(base.parent / "none", unet)


def test_prompts_to_base_to_ssr_files(exports, tmp_path):
    base, ssr = exports
    config = sample_config(tmp_path, base, ssr)
    config.sample.num_frames = 12  # longer than the base model's 8 frames: MultiDiffusion windows
    report = sample(config, tmp_path / "out")
    assert len(report["samples"]) == 3
    for record in report["samples"]:
        with av.open(record["mp4"]) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            assert float(stream.average_rate) == pytest.approx(16.0)
        assert len(frames) == 12 and frames[0].shape == (32, 32, 3)
        clip = np.load(record["npz"])["frames"]
        assert clip.shape == (12, 32, 32, 3) and clip.dtype == np.uint8 and clip.std() > 1
        # GIF and PNG enlarged for people (nearest neighbour, 32 -> 128 px), the NPZ at the model's size.
        with Image.open(record["gif"]) as gif, Image.open(record["png"]) as png:
            assert gif.size == (128, 128) and gif.n_frames == 12 and png.size == (8 * 128, 2 * 128)
            frame = np.asarray(png.convert("RGB"))[:128, 3 * 128:4 * 128]
            np.testing.assert_array_equal(frame, clip[3].repeat(4, axis=0).repeat(4, axis=1))
    saved = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert saved["settings"]["num_frames"] == 12 and "ssr_seconds" in saved["timings"]


def test_batching_and_the_run_diffusion_section_do_not_change_a_prompt(exports, tmp_path):
    base, _ = exports
    config = sample_config(tmp_path, base, None)
    # The batch replicated (1 batch shard), so batch_size 1 really samples the prompts one by one.
    config.mesh.rules = [["batch", None]] + [list(r) for r in DEFAULT_RULES if r[0] != "batch"]
    config.sample.batch_size = 1
    # DPM-Solver++ carries the previous step's x0: its batches must stay independent too (the loop is
    # the one DDIM and DDPM share).
    config.sample.sampler = "dpmpp_2m"
    one = sample(config, tmp_path / "a")
    config.sample.batch_size = 8
    # ... and the run's diffusion section does not matter either: each model samples on the schedule
    # and parameterization it was trained with (its export's).
    config.diffusion.update(shift=16.0, parameterization="eps")
    other = sample(config, tmp_path / "b")
    for x, y in zip(one["samples"], other["samples"]):
        np.testing.assert_array_equal(np.load(x["npz"])["frames"], np.load(y["npz"])["frames"])


def test_bad_requests_fail_before_any_compute(exports, tmp_path):
    base, ssr = exports
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    config = sample_config(tmp_path, base, ssr)
    config.sample.prompts_file = str(empty)
    with pytest.raises(ValueError, match="has no prompts"):
        sample(config, tmp_path)
    config = sample_config(tmp_path, tmp_path / "nowhere", ssr)
    with pytest.raises(FileNotFoundError, match="sample.base_checkpoint .*nowhere is not an export"):
        sample(config, tmp_path)
    wrong = ssr_tiny.get_config()
    wrong.data.resolution = 8
    mismatched = export_random(wrong, tmp_path / "ssr8", 2)
    with pytest.raises(ValueError, match="takes 8x8 clips but the base model makes 16x16"):
        sample(sample_config(tmp_path, base, mismatched), tmp_path)
    with pytest.raises(ValueError, match="is an SSR model, not a base STUNet"):
        sample(sample_config(tmp_path, ssr, None), tmp_path)
    config = sample_config(tmp_path, base, None)
    config.sample.negative_prompt = "a red circle"
    with pytest.raises(ValueError, match="negative prompts are encoded with config.text's T5, but "
                                         "sample.prompt_embeddings is set"):
        sample(config, tmp_path)


def test_negative_prompt_replaces_the_null_text_of_guidance(exports, tmp_path):
    """A request's negative prompt is guidance's unconditional branch: equal to the prompt, guidance
    cancels to the conditional model alone (the sample at scale 1); a request without one keeps the null."""
    prompts = ["a red circle moving left", "a blue square moving up"]
    config = sample_config(tmp_path, exports[0], None, prompts)
    config.sample.prompt_embeddings = ""  # the T5 path encodes prompts and negatives alike
    vocabulary = pathlib.Path(__file__).resolve().parents[1] / "demo/checkpoint/vocab.model"
    config.text.update(encoder="tiny", checkpoint_format="seed", init_seed=0, vocabulary=str(vocabulary),
                       max_length=8, dtype="float32")

    def frames(name, guidance, negatives):
        tasks = tmp_path / f"{name}.jsonl"
        tasks.write_text("".join(json.dumps({"prompt": p, "negative_prompt": n}) + "\n"
                                 for p, n in zip(prompts, negatives)))
        config.sample.update(guidance_scale=guidance, tasks_file=str(tasks))
        report = sample(config, tmp_path / name)
        return report, [np.load(r["npz"])["frames"].astype(int) for r in report["samples"]]

    _, null = frames("null", 2.0, ["", ""])
    report, negative = frames("negative", 2.0, [prompts[0], ""])
    _, conditional = frames("conditional", 1.0, ["", ""])
    assert np.abs(negative[0] - conditional[0]).max() <= 1  # uint8 rounding of (1 - g) c + g c = c
    assert np.abs(negative[0] - null[0]).mean() > 1.0  # and far from the null-guided sample
    assert np.abs(negative[1] - null[1]).max() <= 1  # no negative: the null text, as before
    assert [r["negative_prompt"] for r in report["samples"]] == [prompts[0], None]


def test_image_mode_generates_every_frame_on_its_own(tmp_path):
    """With temporal layers that mix frames, changing frame 0's noise changes the other frames;
    with `image_mode` (temporal modules bypassed, the frame-wise baseline) it changes frame 0 only."""
    config = train_config()
    config.sample.num_steps, config.sample.sampler, config.sample.guidance_scale = 2, "ddim", 2.0
    config.sample.threshold_percentile = 0.0  # a clip-wide percentile would couple the frames' scales
    model = build_unet(config.model)
    for seed, var in enumerate(jax.tree.leaves(nnx.state(model, nnx.Any(TEMPORAL, nnx.PathContains("out_conv"))),
                                               is_leaf=lambda x: isinstance(x, nnx.Variable))):
        var[...] = var[...] + 0.2 * normal(1000 + seed, var[...].shape)
    noise = normal(2, (1, 8, 16, 16, 3))
    changed = noise.at[:, 0].set(normal(3, (1, 16, 16, 3)))
    cond = {"text": normal(4, (1, 4, 32)), "mask": jnp.ones((1, 4), bool)}
    rng = jax.random.key(5)
    for image_mode in (True, False):
        run = jax.jit(lambda n, mode=image_mode: generate(model, cond, n, rng, config, image_mode=mode))
        a, b = np.asarray(run(noise)), np.asarray(run(changed))
        assert np.abs(a[:, 0] - b[:, 0]).max() > 1e-2
        later = np.abs(a[:, 1:] - b[:, 1:]).max()
        assert (later == 0.0) if image_mode else (later > 1e-3), (image_mode, later)
