"""The video sets the metrics read (folders, shards, sampling runs), the UCF101 protocol's class
allocation and prompts, and eval config errors: no metric network is involved."""
import collections
import json

import ml_collections
import numpy as np
import pytest

from lumiere_jax.config import eval_config
from lumiere_jax.data.schema import ClipRecord
from lumiere_jax.data.shards import ShardWriter
from lumiere_jax.evaluation.ucf101_protocol import allocate, check_protocol, class_prompts, reference_class_counts
from lumiere_jax.evaluation.video_metrics import check_eval_config, parse_metrics
from lumiere_jax.evaluation.video_sets import SampledSet, batches, clips_of_length, open_video_set
from lumiere_jax.sample.video_io import write_mp4


def _frames(t, size=16, value=100):
    return np.full((t, size, size, 3), value, np.uint8)


def _write_shard(path, records):
    with ShardWriter(str(path), codec="raw") as writer:
        for r in records:
            writer.write(r)


def test_folder_set_decodes_videos_and_skips_broken_ones(tmp_path):
    write_mp4(tmp_path / "a.mp4", _frames(12, 32), 16)
    (tmp_path / "sub").mkdir()
    write_mp4(tmp_path / "sub" / "b.mp4", _frames(5, 32), 16)
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    (tmp_path / "notes.txt").write_text("not a video")
    videos = open_video_set(str(tmp_path))
    clips = list(clips_of_length(videos, 8, videos))
    assert [c.name for c in clips] == ["a.mp4"]
    assert clips[0].frames.shape == (8, 32, 32, 3) and clips[0].frames.dtype == np.float32
    assert abs(float(clips[0].frames.mean()) - 100 / 255) < 0.02  # H.264 at the writer's quality
    reasons = {s["name"].rsplit("/", 1)[-1]: s["reason"] for s in videos.skipped}
    assert "not a readable video" in reasons["broken.mp4"] and "fewer than eval.num_frames=8" in reasons["b.mp4"]


def test_shard_set_reads_records_with_labels_and_counts_a_corrupt_shard(tmp_path):
    records = [ClipRecord(f"r{i}", f"a video of class {i % 2}", _frames(9, value=10 * i), 16.0,
                          meta={"label": f"class {i % 2}"}) for i in range(3)]
    _write_shard(tmp_path / "ref-00000-of-00002.array_record", records)
    (tmp_path / "ref-00001-of-00002.array_record").write_bytes(b"garbage")
    videos = open_video_set(str(tmp_path / "ref-*.array_record"))
    clips = list(videos)
    assert [c.label for c in clips] == ["class 0", "class 1", "class 0"]
    np.testing.assert_allclose(clips[2].frames, 20 / 255)
    assert len(videos.skipped) == 1 and "not a readable ArrayRecord shard" in videos.skipped[0]["reason"]
    assert reference_class_counts(str(tmp_path / "ref-00000*.array_record")) == {"class 0": 2, "class 1": 1}


def test_sampled_set_reads_a_sampling_run_and_lists_bad_entries_once(tmp_path):
    np.savez(tmp_path / "a.npz", frames=_frames(16))
    samples = [{"prompt": "p0", "npz": "a.npz"}, {"prompt": "p1", "npz": "missing.npz"}]
    (tmp_path / "samples.json").write_text(json.dumps({"samples": samples}))
    videos = SampledSet(tmp_path)
    for _ in range(2):  # two metrics pass over the set
        assert [c.caption for c in videos] == ["p0"]
    assert len(videos.skipped) == 1 and "missing.npz" in videos.skipped[0]["reason"]


def test_sets_with_nothing_to_read_are_named(tmp_path):
    with pytest.raises(ValueError, match="no shards match"):
        open_video_set(str(tmp_path / "none-*.array_record"))
    with pytest.raises(ValueError, match="holds no videos"):
        open_video_set(str(tmp_path))
    with pytest.raises(ValueError, match="no reference videos"):
        open_video_set("")
    with pytest.raises(FileNotFoundError, match="samples.json"):
        SampledSet(tmp_path)


def test_batches_keep_one_shape_each():
    from lumiere_jax.evaluation.video_sets import Clip

    shapes = [8, 8, 8, 16, 16, 8]
    clips = [Clip(str(i), np.zeros((4, s, s, 3), np.float32)) for i, s in enumerate(shapes)]
    assert [[c.name for c in b] for b in batches(clips, 2)] == [["0", "1"], ["2"], ["3", "4"], ["5"]]


def test_allocation_follows_the_class_distribution_exactly():
    counts = collections.Counter({"a": 50, "b": 30, "c": 20, "d": 1})
    labels = allocate(counts, 10)
    assert len(labels) == 10 and collections.Counter(labels) == {"a": 5, "b": 3, "c": 2}
    labels = allocate(counts, 2048)
    assert len(labels) == 2048 and abs(labels.count("a") - 2048 * 50 / 101) < 1
    assert labels == allocate(counts, 2048)


def test_class_prompts_from_template_or_file(tmp_path):
    e = eval_config()
    assert class_prompts(["yo yo"], e) == {"yo yo": "a video of yo yo"}
    e.prompts_file = str(tmp_path / "prompts.json")
    (tmp_path / "prompts.json").write_text(json.dumps({"yo yo": "a person playing with a yo-yo"}))
    assert class_prompts(["yo yo"], e) == {"yo yo": "a person playing with a yo-yo"}
    with pytest.raises(ValueError, match=r"no prompt for 1 classes: \['surfing'\]"):
        class_prompts(["yo yo", "surfing"], e)
    e.prompts_file, e.prompt_template = "", "a video"
    with pytest.raises(ValueError, match="must contain {label}"):
        class_prompts(["yo yo"], e)


@pytest.mark.parametrize("change, message", [
    ({"metrics": "fvd,psnr"}, "unknown psnr"),
    ({"metrics": ""}, "empty"),
    ({"metrics": "fvd"}, "neither eval.reference"),
    ({"metrics": "fvd", "reference": "x", "fvd_feature": "probs"}, "eval.fvd_feature='probs'"),
    ({"metrics": "is"}, "eval.c3d_weights"),
    ({"metrics": "is", "c3d_weights": "w", "c3d_mean": "m", "num_frames": 8}, "defines on 16 frames"),
    ({"metrics": "clip"}, "eval.clip_model"),
    ({"metrics": "shapes", "batch_size": 0}, "eval.batch_size=0"),
])
def test_bad_eval_config_is_named(change, message):
    e = eval_config()
    e.update(change)
    with pytest.raises(ValueError, match=message):
        check_eval_config(e, parse_metrics(e.metrics))


def test_bad_protocol_config_is_named():
    config = ml_collections.ConfigDict({"eval": eval_config()})
    config.eval.protocol = "kinetics"
    with pytest.raises(ValueError, match="choose one of ucf101_zero_shot"):
        check_protocol(config)
    config.eval.protocol, config.eval.num_samples = "ucf101_zero_shot", 4
    with pytest.raises(ValueError, match="at least eval.is_splits=10"):
        check_protocol(config)
    config.eval.num_samples = 16
    with pytest.raises(ValueError, match="needs eval.reference"):
        check_protocol(config)


def test_feature_pass_pads_to_the_batch_shards_and_returns_every_row():
    import jax
    from flax import nnx

    from lumiere_jax.evaluation.feature_pass import FeatureExtractor
    from lumiere_jax.parallel import logical_axis_rules, make_mesh

    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    network = nnx.Linear(12, 2, rngs=nnx.Rngs(0))
    extractor = FeatureExtractor(network, lambda net, v: {"y": net(v.reshape(v.shape[0], -1) * 2.0)}, mesh,
                                 logical_axis_rules())
    videos = np.random.default_rng(0).normal(size=(3, 1, 2, 2, 3)).astype(np.float32)  # 3 rows on 8 devices
    out = extractor(videos)["y"]
    expected = (videos.reshape(3, -1) * 2.0) @ np.asarray(network.kernel[...]) + np.asarray(network.bias[...])
    assert out.shape == (3, 2) and jax.device_count() == 8
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert extractor.compiled(videos).memory_analysis().argument_size_in_bytes > 0
