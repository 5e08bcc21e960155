"""The entry point: model_report output, one-line errors for bad flags and configs, and
`--config.data.sources='GLOB[:WEIGHT[:KIND]],...'` on the command line."""
import json
import pathlib

import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from configs import if_ssr, if_stunet, ssr_tiny, stunet_paper, stunet_tiny
from lumiere_jax.data import schema, shards
from lumiere_jax.data.pipeline import Source, resolve_sources
from lumiere_jax.models.report import forward_flops, model_report, parameter_counts
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import UNet, UNetConfig
from cli_helpers import libtpu_noise, run_main, terminal_lines

CONFIGS = sorted(p.name for p in (pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


def test_model_report_cli_writes_json(repo_root, tmp_path):
    proc = run_main(repo_root, "--config=configs/stunet_tiny.py", f"--workdir={tmp_path}", "--mode=model_report",
                    "--config.model.temporal.attention_depth=2")
    assert proc.returncode == 0, proc.stderr
    assert not libtpu_noise(proc.stderr)  # no TPU here: the CPU is chosen without probing for one
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
    cfg = UNetConfig.from_config(stunet_tiny.get_config().model)
    model = nnx.eval_shape(lambda: UNet(cfg, rngs=Rngs(0)))
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


def test_if_configs_report_the_released_sizes():
    """IF-I-XL and IF-II-L keep their released sizes (4.3B, 1.2B); the inflation adds only temporal ones.
    Both are counted without the report's FLOPs (tracing their forward passes costs minutes here); the
    report of the tiny SSR covers the FLOPs path of a model that takes the augmentation level."""
    def shape_and_counts(config):
        cfg = UNetConfig.from_config(config.model)
        return cfg, parameter_counts(nnx.eval_shape(lambda: UNet(cfg, rngs=Rngs(0))))

    config = if_stunet.get_config("xl")
    cfg, counts = shape_and_counts(config)
    assert 4.25e9 < counts["spatial"] < 4.35e9 and counts["conditioning"] == 0
    assert [lv["frames"] for lv in cfg.level_shapes(config.data.num_frames, config.data.resolution)] == [80, 40, 20, 10]
    config = if_ssr.get_config("l")  # IF-II-L is the released 1.2B; the SSR keeps its 16 frames
    cfg, counts = shape_and_counts(config)
    assert 1.15e9 < counts["spatial"] < 1.25e9 and counts["temporal"] > 0
    assert config.data.hires_resolution == 256 and cfg.in_channels + cfg.conditioning_channels == 6
    assert {lv["frames"] for lv in cfg.level_shapes(config.data.num_frames, config.data.hires_resolution)} == {16}
    tiny_ssr = model_report(ssr_tiny.get_config())
    assert tiny_ssr["input"]["resolution"] == 32 and tiny_ssr["forward_flops_per_clip"] > 0


@pytest.mark.parametrize("args, message", [
    (["--config=configs/missing.py"], "could not load --config"),
    (["--config=configs/stunet_tiny.py", "--mode=bogus"], "unknown --mode='bogus'"),
    (["--config=configs/stunet_tiny.py", "--config.model.base_channels=abc"], "config.model.base_channels=abc"),
    (["--config=configs/stunet_tiny.py", "--config.data.num_frames=18"], "num_frames=18 is not divisible"),
])
def test_bad_invocations_fail_with_one_line(repo_root, tmp_path, args, message):
    assert message in error_line(run_main(repo_root, f"--workdir={tmp_path}", *args))


def error_line(proc) -> str:
    """The one `lumiere_jax:` line a failed start-up prints (and no traceback)."""
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lumiere_jax:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def shard_globs(tmp_path_factory):
    """Two shards fitting the small STUNet below: 8-frame 16x16 clips and stills (one frame, so
    they only load as kind image), with (8, 32) text embeddings (stunet_tiny's text size)."""
    d = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    for name, frames in (("clips", 8), ("stills", 1)):
        with shards.ShardWriter(str(d / shards.shard_name(name, 0, 1))) as writer:
            for i in range(4):
                writer.write(schema.ClipRecord(
                    id=f"{name}-{i}", caption=f"{name} {i}", fps=8.0,
                    frames=rng.integers(0, 256, (frames, 16, 16, 3), dtype=np.uint8),
                    text_embeddings=rng.standard_normal((8, 32)).astype(np.float32), text_mask=np.arange(8) < 3))
    return {"clips": str(d / "clips-*.array_record"), "stills": str(d / "stills-*"), "dir": str(d)}


SMALL_TRAIN = ["--config=configs/stunet_tiny.py", "--mode=train", "--config.train.num_steps=1",
               "--config.data.num_workers=0", "--config.data.num_frames=8", "--config.data.resolution=16",
               "--config.data.text_embeddings=True", "--config.model.base_channels=8", "--config.model.norm_groups=4",
               "--config.model.channel_mult=(1, 2)", "--config.model.attention_levels=(1,)",
               "--config.model.temporal.downsample_levels=(0,)"]


def test_sources_string_on_the_command_line_trains_quietly(repo_root, tmp_path, shard_globs):
    """Two steps from a string override; the stills fail the start-up probe as kind video (one frame,
    not 8), so the run only trains if KIND was read from the string. With Grain workers and a
    checkpoint per step, the terminal shows the progress bar and the summary line, nothing else
    (no libtpu start-up errors, no Orbax INFO lines, no leaked shared memory or ignored exceptions
    at exit)."""
    sources = f"{shard_globs['clips']}:3, {shard_globs['stills']}:1:image"
    args = [a for a in SMALL_TRAIN if "num_steps" not in a and "num_workers" not in a]
    proc = run_main(repo_root, f"--workdir={tmp_path}", *args, f"--config.data.sources={sources}",
                    "--config.train.num_steps=2", "--config.train.checkpoint_every=1", "--config.data.num_workers=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["step"] == 2 and summary["last_metrics"]["data/skipped_records"] == 0
    assert terminal_lines(proc.stderr) == [f"trained to step 2; checkpoints in {tmp_path / 'checkpoints'}"], proc.stderr


@pytest.mark.parametrize("sources, message", [
    (":2:video", "data.sources[0] ':2:video': glob must be a non-empty string"),
    ("{clips}:abc", "weight must be a positive number, got 'abc'"),
    ("{clips}:-1:image", "weight must be a positive number, got -1.0"),
    ("{clips}:1:movie", "kind must be one of ('video', 'image'), got 'movie'"),
    ("{clips},{dir}/none-*.array_record:1:image", "data.sources[1] '{dir}/none-*.array_record:1:image': glob"),
])
def test_bad_sources_strings_fail_with_one_line(repo_root, tmp_path, shard_globs, sources, message):
    line = error_line(run_main(repo_root, f"--workdir={tmp_path}", *SMALL_TRAIN,
                               f"--config.data.sources={sources.format(**shard_globs)}"))
    assert message.format(**shard_globs) in line
    assert "write GLOB[:WEIGHT[:KIND]],..." in line or "matches no shard files" in line


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_takes_sources_on_the_command_line(repo_root, shard_globs, name):
    """The override reaches the config (whatever the file set data.sources to) through absl and
    ml_collections as lumiere_jax.main parses it, and resolves to the sources it names."""
    sources = f"{shard_globs['clips']},{shard_globs['stills']}:0.5:image"
    argv = ["main", f"--config={repo_root / 'configs' / name}", f"--config.data.sources={sources}"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    assert flag_values.config.data.sources == sources
    clips, stills = (sorted(pathlib.Path(shard_globs["dir"]).glob(f"{n}-*.array_record")) for n in ("clips", "stills"))
    assert resolve_sources(flag_values.config.data.sources) == [
        Source(shard_globs["clips"], 1.0, "video", tuple(map(str, clips))),
        Source(shard_globs["stills"], 0.5, "image", tuple(map(str, stills))),
    ]
