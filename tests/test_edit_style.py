"""Video editing (SDEdit) and stylized generation (spatial weight interpolation): the sampler's
strength grid, the edit task end to end, the style fine-tune, export and interpolation, the image
shard job, and the errors of bad settings."""
import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from data_pipelines import prepare_images
from lumiere_jax import parallel
from lumiere_jax.data.shards import iter_records
from lumiere_jax.diffusion import sdedit_steps
from lumiere_jax.models import param_groups
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import UNet, UNetConfig, build_unet
from lumiere_jax.models.weights import interpolate_spatial, load_weights, restore_model
from lumiere_jax.sample.job import sample
from lumiere_jax.sample.video_io import write_lossless_video
from lumiere_jax.train.trainer import export, train
from sample_helpers import export_random, sample_config
from train_helpers import SyntheticBatches, train_config

T, S = 8, 16


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit_style_exports")
    base = export_random(train_config(), root / "base", 0)
    other = train_config()
    other.model.base_channels = 16  # another backbone
    return {"base": base, "style_full": export_random(train_config(), root / "style_full", 5),
            "other": export_random(other, root / "other", 6)}


def test_strength_maps_to_the_nearest_step_of_the_grid():
    assert [sdedit_steps(s, 32) for s in (0.01, 0.02, 0.5, 0.99, 1.0)] == [0, 1, 16, 32, 32]
    for bad in (0.0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="sample.strength"):
            sdedit_steps(bad, 32)


def edit_config(tmp_path, checkpoint, video, strength, **kw):
    config = sample_config(tmp_path, checkpoint, None, ["a red circle moving left"])
    config.sample.update(task="edit", input=str(video), strength=strength, **kw)
    config.provenance.watermark = False  # the sampler's own pixels are compared with the input's
    return config


def frames_of(report):
    with np.load(report["samples"][0]["npz"]) as data:
        return data["frames"]


def test_edit_keeps_the_input_at_the_smallest_strength_and_ignores_it_at_one(exports, tmp_path):
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8) for _ in range(2)]
    for i, v in enumerate(videos):
        write_lossless_video(tmp_path / f"{i}.mkv", v, 16.0)
    kept = frames_of(sample(edit_config(tmp_path, exports["base"], tmp_path / "0.mkv", 0.1), tmp_path / "kept"))
    np.testing.assert_array_equal(kept, videos[0])  # 0.1 of 4 steps rounds to none: the input
    ignored = [frames_of(sample(edit_config(tmp_path, exports["base"], tmp_path / f"{i}.mkv", 1.0), tmp_path / f"i{i}"))
               for i in range(2)]
    np.testing.assert_array_equal(ignored[0], ignored[1])
    half = frames_of(sample(edit_config(tmp_path, exports["base"], tmp_path / "0.mkv", 0.5), tmp_path / "half"))
    assert not np.array_equal(half, videos[0]) and not np.array_equal(half, ignored[0])
    # Closer to the input than the unedited sample is.
    assert np.abs(half.astype(float) - videos[0]).mean() < np.abs(ignored[0].astype(float) - videos[0]).mean()
    saved = json.loads((tmp_path / "half" / "samples.json").read_text())["settings"]
    assert saved["task"] == "edit" and saved["strength"] == 0.5
    # One step of the grid (0.25 of 4) is the x0 prediction: the same whichever sampler the config names.
    one = [frames_of(sample(edit_config(tmp_path, exports["base"], tmp_path / "0.mkv", 0.25, sampler=sampler),
                            tmp_path / sampler)) for sampler in ("ddim", "dpmpp_2m")]
    np.testing.assert_array_equal(one[0], one[1])
    assert not np.array_equal(one[0], videos[0])


def spatial_and_temporal(model):
    flat = lambda s: {p: np.asarray(v.get_raw_value()) for p, v in nnx.to_flat_state(s)}  # noqa: E731
    return flat(nnx.state(model, param_groups.SPATIAL)), flat(nnx.state(model, param_groups.TEMPORAL))


def loaded(path):
    """The tiny model holding a full export's weights."""
    cfg = UNetConfig.from_config(train_config().model)
    return restore_model(path, lambda key: UNet(cfg, rngs=Rngs(key)))


def test_alpha_zero_is_the_base_and_one_the_style_temporal_weights_untouched(exports):
    base_spatial, base_temporal = spatial_and_temporal(loaded(exports["base"]))
    style_spatial, _ = spatial_and_temporal(loaded(exports["style_full"]))
    for alpha, want in ((0.0, base_spatial), (1.0, style_spatial)):
        model = loaded(exports["base"])
        info = interpolate_spatial(model, exports["style_full"], alpha)
        spatial, temporal = spatial_and_temporal(model)
        for path in want:
            np.testing.assert_array_equal(spatial[path], want[path], err_msg=str(path))
        for path in base_temporal:
            np.testing.assert_array_equal(temporal[path], base_temporal[path], err_msg=str(path))
        assert info["interpolated"] == len(want) and info["ignored"]  # the full export's temporal part
    model = loaded(exports["base"])
    interpolate_spatial(model, exports["style_full"], 0.25)
    spatial, _ = spatial_and_temporal(model)
    path = next(iter(spatial))
    np.testing.assert_allclose(spatial[path], 0.75 * base_spatial[path] + 0.25 * style_spatial[path], rtol=1e-6)


def test_style_of_another_backbone_or_alpha_out_of_range_is_refused(exports, tmp_path):
    model = loaded(exports["base"])
    with pytest.raises(ValueError, match=r"not of this backbone: .* is \(16,\), the model's is \(8,\)"):
        interpolate_spatial(model, exports["other"], 0.5)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="style_alpha"):
            interpolate_spatial(model, exports["style_full"], alpha)
    config = sample_config(tmp_path, exports["base"], None, ["a red circle moving left"])
    config.sample.style_checkpoint = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="style_checkpoint .* is not an export"):
        sample(config, tmp_path / "out")


class ImageBatches(SyntheticBatches):
    """Stills (one frame) flagged as an image batch, as the pipeline flags a kind='image' source."""

    def __next__(self):
        batch = super().__next__()
        return dict(batch, image_batch=True)


def test_style_fine_tune_trains_only_spatial_weights_and_exports_them_alone(exports, tmp_path):
    config = train_config(steps=12)
    config.data.num_frames = 1
    config.train.trainable = "spatial"
    config.train.init_from = str(exports["base"])
    config.train.checkpoint_every = 12
    config.train.log_every = 4
    mesh = parallel.make_mesh(dict(config.mesh.shape))
    summary = train(config, tmp_path / "style", ImageBatches(config, mesh, parallel.logical_axis_rules()))
    assert summary["losses"][-1] < summary["losses"][0]
    out = export(config, tmp_path / "style")
    model = build_unet(train_config().model, seed=9)
    assert load_weights(out, model) == "spatial"  # the export holds the spatial weights only
    base_spatial, base_temporal = spatial_and_temporal(loaded(exports["base"]))
    styled = loaded(exports["base"])
    interpolate_spatial(styled, out, 1.0)
    spatial, temporal = spatial_and_temporal(styled)
    assert any(not np.array_equal(spatial[p], base_spatial[p]) for p in spatial)
    for path in base_temporal:
        np.testing.assert_array_equal(temporal[path], base_temporal[path])


def test_prepare_images_writes_captioned_stills_and_counts_the_rest(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("a", "sub/b", "no_caption"):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(images / f"{name}.png")
    (images / "a.txt").write_text("a red circle")
    (images / "sub" / "b.txt").write_text("a blue square\n")
    (images / "broken.png").write_bytes(b"no image")
    (images / "broken.txt").write_text("a green triangle")
    out = tmp_path / "shards"
    status = prepare_images.main(["--image_dir", str(images), "--output_dir", str(out), "--sizes", "16,32",
                                  "--num_shards", "1", "--workers", "1"])
    assert status == 0
    records = [r for shard in sorted(out.glob("*.array_record")) for r in iter_records(str(shard))]
    assert sorted(r.caption for r in records) == ["a blue square", "a red circle"]
    assert all(r.frames.shape == (1, 16, 16, 3) and r.hires[32].shape == (1, 32, 32, 3) for r in records)
    summary = json.loads(next(out.glob("*summary.json")).read_text())
    assert summary["skipped"] == {"no_caption": 1, "unreadable": 1}
    # The images moved elsewhere: the shard is theirs still (its fingerprint holds no paths).
    moved = images.rename(tmp_path / "moved")
    args = ["--output_dir", str(out), "--sizes", "16,32", "--num_shards", "1", "--workers", "1"]
    assert prepare_images.main(["--image_dir", str(moved), *args]) == 0
    assert json.loads(next(out.glob("*summary.json")).read_text())["shards"]["kept"] == 1

