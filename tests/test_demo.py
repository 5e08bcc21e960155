"""The CPU demo: the committed checkpoints are complete and their provenance meets the targets, and
`--mode=demo` runs end to end with reduced step counts (tests/test_demo_checkpoints.py re-measures
the checkpoints)."""
import json
import os
import subprocess
import sys

import av
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import demo, demo_conditional, demo_long, demo_style
from data_pipelines.synthetic import caption, parse_heldout
from lumiere_jax.demo import REPORT_NAME, prepare_workdir
from lumiere_jax.models.unet import UNetConfig

TARGETS = demo.TARGETS
HELDOUT_PROMPTS = [caption(*combo) for combo in parse_heldout(demo.HELDOUT)]
MAX_CHECKPOINT_BYTES = 20 * 2**20


def small_checkpoint_files(directory) -> set:
    """The names of a committed checkpoint's files, after checking it stays small enough to commit."""
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_CHECKPOINT_BYTES
    return {p.name for p in files}


def same_model(exported: dict, model_config) -> bool:
    """The export's model is the one `model_config` builds (settings added since it was written read
    as their defaults, as loading it does)."""
    return UNetConfig.from_config(ml_collections.ConfigDict(exported)) == UNetConfig.from_config(model_config)


def test_checkpoint_is_shipped_with_what_sampling_needs(repo_root):
    directory = repo_root / "demo" / "checkpoint"
    assert {"config.json", "vocab.model", "provenance.json"} <= small_checkpoint_files(directory)
    assert (directory / "params").is_dir()
    exported = json.loads((directory / "config.json").read_text())
    config = demo.get_config()
    assert same_model(exported["model"], config.model)  # configs/demo.py builds this checkpoint
    assert exported["text"] == json.loads(config.text.to_json())


def test_provenance_records_the_run_and_its_scores(repo_root):
    card = json.loads((repo_root / "demo" / "checkpoint" / "provenance.json").read_text())
    assert "--mode=train" in card["train_command"] and "configs/demo.py" in card["train_command"]
    assert card["steps"] == demo.get_config().train.num_steps
    assert card["wall_seconds"] > 0 and np.isfinite(card["final_loss"]) and card["hardware"]["cpu_cores"] >= 1
    assert card["heldout_combinations"] == demo.HELDOUT and card["targets_on_heldout"] == TARGETS
    held = card["scores"]["stunet"]["heldout"]
    framewise = card["scores"]["framewise_temporal_bypassed"]["heldout"]
    assert held["num_clips"] == framewise["num_clips"] == 48
    # The space-time model moves its objects smoothly; frames generated independently make them jump.
    assert held["trajectory_jitter"] < framewise["trajectory_jitter"] / 4
    for metric, target in TARGETS.items():
        assert held[metric] >= target, metric
    # ... and only the space-time model follows the direction word (chance is 25%).
    assert framewise["direction_accuracy"] < 0.5


def test_conditional_checkpoint_is_the_demo_model_fine_tuned_with_conditioning(repo_root):
    directory = repo_root / "demo" / "conditional_checkpoint"
    assert {"config.json", "provenance.json"} <= small_checkpoint_files(directory)
    exported = json.loads((directory / "config.json").read_text())
    config = demo_conditional.get_config()
    assert same_model(exported["model"], config.model) and exported["model"]["conditioning_channels"] == 4
    assert exported["text"] == json.loads(demo.get_config().text.to_json())  # the demo's text path, unchanged
    assert exported["train"]["init_from"] == "demo/checkpoint"


def test_conditional_provenance_meets_every_task_target_and_reports_the_baseline(repo_root):
    card = json.loads((repo_root / "demo" / "conditional_checkpoint" / "provenance.json").read_text())
    assert "--mode=train" in card["train_command"] and "configs/demo_conditional.py" in card["train_command"]
    assert card["steps"] == demo_conditional.get_config().train.num_steps and card["fine_tuned_from"] == "demo/checkpoint"
    for task, targets in demo_conditional.TARGETS.items():
        model, baseline = card["scores"][task]["model"], card["scores"][task]["replacement"]
        assert model["num_clips"] == baseline["num_clips"] == 48, task
        assert model["known_pixels_kept"] == baseline["known_pixels_kept"] == 1.0, task
        for metric, target in targets.items():
            assert model[metric] >= target, (task, metric)
            assert metric in baseline
    assert card["scores"]["cinemagraph"]["model"]["outside_region_constant"] == 1.0
    t2v = card["scores"]["t2v"]
    for metric in ("color_accuracy", "direction_accuracy", "presence_rate"):
        assert t2v["conditional_checkpoint"][metric] >= t2v["demo_checkpoint"][metric] - demo_conditional.T2V_TOLERANCE
    assert all(all(checks.values()) for checks in card["targets_met"].values())


def test_style_checkpoint_holds_spatial_weights_only_and_meets_the_edit_and_style_targets(repo_root):
    directory = repo_root / "demo" / "style_checkpoint"
    small_checkpoint_files(directory)
    exported = json.loads((directory / "config.json").read_text())
    assert exported["train"]["trainable"] == "spatial" and exported["train"]["init_from"] == "demo/checkpoint"
    card = json.loads((directory / "provenance.json").read_text())
    assert "configs/demo_style.py" in card["train_command"] and card["style"]["images"] <= 256
    assert card["defaults"] == {"strength": demo.get_config().sample.strength,
                                "style_alpha": demo.get_config().sample.style_alpha}
    assert card["edit_checkpoint"] == demo.get_config().demo.edit_checkpoint  # the demo's edits are the ones scored
    edits, styles = card["scores"]["edit"], card["scores"]["style"]
    default = edits[f"color_{card['defaults']['strength']}"]
    assert default["num_clips"] >= 48 and default["track_distance_px"] <= demo.EDIT_TARGETS["track_distance_px"]
    assert default["edit_success"] >= demo.EDIT_TARGETS["edit_success"]
    assert default["direction_kept"] >= demo.EDIT_TARGETS["direction_kept"]
    shape = edits[f"shape_{card['defaults']['strength']}"]  # another shape, the same direction
    assert shape["num_clips"] >= 48 and shape["direction_kept"] >= demo.EDIT_TARGETS["direction_kept"]
    assert shape["track_distance_px"] <= demo.EDIT_TARGETS["track_distance_px"]
    assert all(card["targets_met"]["edit"].values()) and all(card["targets_met"]["shape_edit_keeps_motion"].values())
    backgrounds = [styles[a]["background_level"] for a in sorted(styles, key=float)]
    assert backgrounds == sorted(backgrounds) and backgrounds[-1] > backgrounds[0] + 0.1  # the style rises with alpha
    at_default = styles[str(card["defaults"]["style_alpha"])]
    assert at_default["num_clips"] >= 48 and all(at_default[k] >= v for k, v in demo_style.TARGETS.items())
    assert all(card["targets_met"]["style"].values()) and card["targets_met"]["style_rises_with_alpha"]


def test_long_checkpoint_is_scored_on_64_frame_heldout_clips_for_every_aggregation(repo_root):
    """demo/long_checkpoint (issue 21): its own weights (not demo/checkpoint's), frame positions counted
    from the long clip, and a provenance file that scores 64-frame held-out clips for every aggregation
    and overlap: each aggregation's seams are smaller than independent windows' (the baseline)."""
    directory = repo_root / "demo" / "long_checkpoint"
    assert {"config.json", "vocab.model", "provenance.json"} <= small_checkpoint_files(directory)
    config = demo_long.get_config()
    exported = json.loads((directory / "config.json").read_text())
    assert same_model(exported["model"], config.model) and exported["model"]["temporal"]["frame_position"] == "global"
    assert exported["train"].get("init_from", "") == ""  # trained from scratch
    card = json.loads((directory / "provenance.json").read_text())
    assert "--mode=train" in card["train_command"] and "configs/demo_long.py" in card["train_command"]
    assert card["steps"] == config.train.num_steps and card["heldout_combinations"] == demo_long.HELDOUT
    assert card["targets_on_heldout_long_clips"] == {"num_frames": demo_long.LONG_FRAMES, **demo_long.TARGETS}
    scores = card["scores"]
    chosen = scores[f"{config.sample.window_aggregation}_overlap{config.sample.window_overlap}"]
    assert chosen["num_frames"] == demo_long.LONG_FRAMES
    independent = scores.pop("independent_overlap0")["heldout"]
    assert scores.pop("training_length")["heldout"]["num_clips"] == 24
    assert set(scores) == {f"{a}_overlap{o}" for a in ("average", "taper", "shifted") for o in (8, 12)}
    for setting in scores.values():
        held = setting["heldout"]
        assert held["num_clips"] == held["clips_with_seams"] == 24
        assert held["seam_ratio"] < independent["seam_ratio"] and held["direction_accuracy"] > 0.25  # chance: 25%
    # Windows extended one after another, scored by the same script into its own card (README's table).
    extended = json.loads((directory / "provenance_extend.json").read_text())["scores"]["extend_overlap12"]
    assert extended["num_frames"] == demo_long.LONG_FRAMES and extended["heldout"]["num_clips"] == 24
    assert extended["heldout"]["seam_ratio"] < independent["seam_ratio"]
    # ... and again with resampling (sample.resample=4, DDPM 8 steps): no far jump left at any boundary.
    resampled = json.loads((directory / "provenance_extend_resample4.json").read_text())
    assert resampled["sampling"]["sampler"] == "ddpm" and resampled["sampling"]["resample"] == 4
    held = resampled["scores"]["extend_overlap12"]["heldout"]
    assert held["num_clips"] == 24 and held["worst_seam_ratio"] < extended["heldout"]["worst_seam_ratio"] / 2
    # The default's windows with other samplers and step counts (README's table).
    for name, sampler, steps in (("provenance_taper_steps32.json", "dpmpp_2m", 32),
                                 ("provenance_ddpm16.json", "ddpm", 16), ("provenance_ddpm32.json", "ddpm", 32)):
        other = json.loads((directory / name).read_text())
        assert other["sampling"]["sampler"] == sampler and other["sampling"]["num_steps"] == steps
        assert other["scores"]["taper_overlap12"]["heldout"]["num_clips"] == 24


def test_prepare_workdir_replaces_a_demo_and_refuses_anything_else(tmp_path):
    previous = tmp_path / "previous"
    (previous / "samples").mkdir(parents=True)
    (previous / "train" / "checkpoints").mkdir(parents=True)
    (previous / REPORT_NAME).write_text("{}")
    (previous / "notes.txt").write_text("mine")
    prepare_workdir(previous)
    assert sorted(p.name for p in previous.iterdir()) == ["notes.txt"]
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not empty and holds no earlier demo"):
        prepare_workdir(other)
    assert (other / "checkpoints").is_dir()
    prepare_workdir(tmp_path / "new")
    assert (tmp_path / "new").is_dir()


def run_demo(repo_root, workdir, *overrides):
    """`--mode=demo` in a subprocess on 2 CPU devices, as ./demo.sh runs it on 2 cores (not the suite's 8)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run(
        [sys.executable, "-m", "lumiere_jax.main", "--config=configs/demo.py", f"--workdir={workdir}", "--mode=demo",
         *overrides], cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)


# As ./demo.sh runs it (XLA's defaults): optimised programs compile a little slower and sample and
# train faster; alone on 2 cores the reduced demo took 121 s this way, 132 s unoptimised.
@pytest.mark.optimized_xla
def test_demo_mode_end_to_end(repo_root, tmp_path):
    workdir = tmp_path / "demo"
    proc = run_demo(repo_root, workdir, "--config.demo.samples_per_prompt=1", "--config.sample.num_steps=2",
                    "--config.demo.train_examples=32", "--config.demo.train_steps=6", "--config.demo.log_every=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = workdir / "samples"
    mp4s = sorted(samples.glob("*.mp4"))
    assert len(mp4s) == 6 and len(list(samples.glob("*.gif"))) == 7  # one per clip + overview.gif
    with av.open(str(mp4s[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16
    with Image.open(samples / "overview.gif") as gif:
        assert gif.size == (6 * 32 * 4, 32 * 4) and gif.n_frames == 16
    evaluation = json.loads((samples / "eval_report.json").read_text())
    assert evaluation["heldout"]["num_clips"] == 6 and evaluation["seen"] is None
    report = json.loads((workdir / REPORT_NAME).read_text())
    assert report["samples"]["prompts"] == HELDOUT_PROMPTS
    assert report["training"]["steps"] == 6 and len(report["training"]["losses"]) == 3
    assert (workdir / "train" / "checkpoints").is_dir() and list((workdir / "train" / "tensorboard").iterdir())
    assert len(list((workdir / "data").glob("*.array_record"))) == 2 and list((workdir / "data").glob("*.t5"))
    assert "loss=" in proc.stderr  # the progress bar shows the loss
    for line in ("overview.gif", "held-out scores", "training from scratch: loss", str(workdir / REPORT_NAME),
                 "i2v: direction", "inpaint: direction", "cinemagraph: direction"):
        assert line in proc.stdout
    for task, clips in (("i2v", 8), ("inpaint", 6), ("cinemagraph", 6)):
        scores = report["tasks"][task]
        assert len(scores["prompts"]) == scores["num_clips"] == clips and scores["known_pixels_kept"] == 1.0
        with Image.open(workdir / "tasks" / task / "overview.gif") as gif:  # given above, result below
            assert gif.size == (clips * 32 * 4, 2 * 32 * 4) and gif.n_frames == 16
    assert report["tasks"]["cinemagraph"]["outside_region_constant"] == 1.0
    for task in ("edit", "style"):  # the input (or the plain sample) above, the result below
        assert report["tasks"][task]["num_clips"] == 6 and f"{task}: " in proc.stdout
        with Image.open(workdir / "tasks" / task / "overview.gif") as gif:
            assert gif.size == (6 * 32 * 4, 2 * 32 * 4) and gif.n_frames == 16
    assert report["tasks"]["edit"]["prompts"] != HELDOUT_PROMPTS  # recoloured captions
    # A bad demo value fails before anything is written or removed.
    proc = run_demo(repo_root, workdir, "--config.demo.train_steps=0")
    assert proc.returncode == 2 and "demo.train_steps=0 must be >= 1" in proc.stderr
    assert (workdir / REPORT_NAME).is_file()
