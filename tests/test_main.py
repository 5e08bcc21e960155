"""The entry point: model_report output, and one-line errors for bad flags and configs."""
import json
import os
import subprocess
import sys

import pytest

from configs import stunet_paper, stunet_tiny
from lumiere_jax.models.report import forward_flops, model_report


def run_main(repo_root, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "lumiere_jax.main", *args], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_model_report_cli_writes_json(repo_root, tmp_path):
    proc = run_main(repo_root, "--config=configs/stunet_tiny.py", f"--workdir={tmp_path}", "--mode=model_report",
                    "--config.model.temporal.attention_depth=2")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "model_report.json").read_text())
    params = report["parameters"]
    assert params["total"] == params["spatial"] + params["temporal"] + params["conditioning"]
    assert sum(sum(v.values()) for v in params["per_level"].values()) == params["total"]
    assert [(lv["frames"], lv["resolution"]) for lv in report["levels"]] == [(16, 32), (8, 16), (4, 8)]
    assert report["temporal_attention_levels"] == [2]
    assert report["levels"][2]["temporal_attention_layers"] == 2  # the override took effect
    assert [lv["temporal_conv_blocks"] for lv in report["levels"]] == [True, True, False]
    assert report["forward_flops_per_clip"] > 1e9


def test_flops_scale_with_batch_and_frames():
    from flax import nnx

    from lumiere_jax.models.unet import UNet, UNetConfig

    cfg = UNetConfig.from_config(stunet_tiny.get_config().model)
    model = nnx.eval_shape(lambda: UNet(cfg, rngs=nnx.Rngs(0)))
    one = forward_flops(model, 1, 16, 32, 8)
    assert forward_flops(model, 2, 16, 32, 8) == pytest.approx(2 * one, rel=0.01)
    # twice the frames costs about twice as much (attention over time is a small part)
    assert forward_flops(model, 1, 32, 32, 8) == pytest.approx(2 * one, rel=0.05)


def test_paper_config_reports_without_allocating():
    report = model_report(stunet_paper.get_config())
    assert report["input"] == {"frames": 80, "resolution": 128, "channels": 3, "text_tokens": 128, "text_dim": 4096}
    assert [lv["frames"] for lv in report["levels"]] == [80, 40, 20, 10, 10]
    assert report["temporal_attention_levels"] == [4]
    assert 5e8 < report["parameters"]["total"] < 1e9
    assert report["forward_tflops_per_clip"] > 10


@pytest.mark.parametrize("args, message", [
    (["--config=configs/missing.py"], "could not load --config"),
    (["--config=configs/stunet_tiny.py", "--mode=bogus"], "unknown --mode='bogus'"),
    (["--config=configs/stunet_tiny.py", "--config.model.base_channels=abc"], "config.model.base_channels=abc"),
    (["--config=configs/stunet_tiny.py", "--config.data.num_frames=18"], "num_frames=18 is not divisible"),
])
def test_bad_invocations_fail_with_one_line(repo_root, tmp_path, args, message):
    proc = run_main(repo_root, f"--workdir={tmp_path}", *args)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lumiere_jax:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
