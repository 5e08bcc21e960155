"""The CPU demo: the committed checkpoint follows prompts held out of its training (with its
provenance complete), and `--mode=demo` runs end to end with reduced step counts."""
import json
import os
import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from configs import demo, demo_conditional, demo_style
from data_pipelines.synthetic import caption, parse_heldout
from lumiere_jax.demo import REPORT_NAME, prepare_workdir
from lumiere_jax.evaluation import evaluate_samples
from lumiere_jax.evaluation.conditional import heldout_clips, score_task, write_requests
from lumiere_jax.sample.job import sample

TARGETS = demo.TARGETS
HELDOUT_PROMPTS = [caption(*combo) for combo in parse_heldout(demo.HELDOUT)]
MAX_CHECKPOINT_BYTES = 20 * 2**20


def demo_config(repo_root):
    """configs/demo.py with its repository-relative paths made absolute (tests may run anywhere)."""
    config = demo.get_config()
    config.sample.base_checkpoint = str(repo_root / config.sample.base_checkpoint)
    config.text.vocabulary = str(repo_root / config.text.vocabulary)
    return config


def test_checkpoint_is_shipped_with_what_sampling_needs(repo_root):
    directory = repo_root / "demo" / "checkpoint"
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_CHECKPOINT_BYTES
    assert {"config.json", "vocab.model", "provenance.json"} <= {p.name for p in files}
    assert (directory / "params").is_dir()
    exported = json.loads((directory / "config.json").read_text())
    config = demo.get_config()
    assert exported["model"] == json.loads(config.model.to_json())  # configs/demo.py builds this checkpoint
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


def test_committed_checkpoint_follows_heldout_prompts(repo_root, tmp_path):
    """Samples every held-out combination 8 times with the demo's own sampler settings (the
    protocol of provenance.json): the object is there, in the prompt's colour, moving the way the
    prompt says, although no training clip showed that combination."""
    config = demo_config(repo_root)
    config.sample.prompts = HELDOUT_PROMPTS * 8
    sample(config, tmp_path)
    report = evaluate_samples(tmp_path, progress=False, heldout=demo.HELDOUT)
    held = report["heldout"]
    assert held["num_clips"] == 48 and report["seen"] is None
    for metric, target in TARGETS.items():
        assert held[metric] >= target, (metric, report["per_combination"])


def test_conditional_checkpoint_is_the_demo_model_fine_tuned_with_conditioning(repo_root):
    directory = repo_root / "demo" / "conditional_checkpoint"
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_CHECKPOINT_BYTES
    assert {"config.json", "provenance.json"} <= {p.name for p in files}
    exported = json.loads((directory / "config.json").read_text())
    config = demo_conditional.get_config()
    assert exported["model"] == json.loads(config.model.to_json()) and exported["model"]["conditioning_channels"] == 4
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
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_CHECKPOINT_BYTES
    exported = json.loads((directory / "config.json").read_text())
    assert exported["train"]["trainable"] == "spatial" and exported["train"]["init_from"] == "demo/checkpoint"
    card = json.loads((directory / "provenance.json").read_text())
    assert "configs/demo_style.py" in card["train_command"] and card["style"]["images"] <= 256
    assert card["defaults"] == {"strength": demo.get_config().sample.strength,
                                "style_alpha": demo.get_config().sample.style_alpha}
    edits, styles = card["scores"]["edit"], card["scores"]["style"]
    default = edits[f"color_{card['defaults']['strength']}"]
    assert default["num_clips"] >= 48 and default["track_distance_px"] <= demo.EDIT_TARGETS["track_distance_px"]
    assert default["edit_success"] >= demo.EDIT_TARGETS["edit_success"]
    # Recorded as measured: direction kept is 88.5% here, under the 90% target (issue 15 stays open).
    assert card["targets_met"]["edit"]["direction_kept"] == (default["direction_kept"] >= 0.9)
    backgrounds = [styles[a]["background_level"] for a in sorted(styles, key=float)]
    assert backgrounds == sorted(backgrounds) and backgrounds[-1] > backgrounds[0] + 0.1  # the style rises with alpha
    at_default = styles[str(card["defaults"]["style_alpha"])]
    assert at_default["num_clips"] >= 48 and all(at_default[k] >= v for k, v in demo_style.TARGETS.items())
    assert all(card["targets_met"]["style"].values()) and card["targets_met"]["style_rises_with_alpha"]


def test_conditional_checkpoint_animates_heldout_images_the_way_each_word_says(repo_root, tmp_path):
    """Image-to-video as in the provenance protocol (one first frame of every held-out combination
    here instead of two, to keep the suite short), each with the four direction words, through the
    sampling job's tasks_file path."""
    config = demo_config(repo_root)
    config.sample.base_checkpoint = str(repo_root / "demo" / "conditional_checkpoint")
    clips = heldout_clips(demo.HELDOUT, 1, config.data.num_frames, config.data.resolution, central=True)
    config.sample.update(task="i2v", tasks_file=str(write_requests("i2v", clips, tmp_path / "inputs", 16.0)))
    sample(config, tmp_path)
    scores = score_task("i2v", tmp_path, pathlib.Path(config.sample.tasks_file), demo.HELDOUT, 16.0)
    assert scores["num_clips"] == 24 and scores["known_pixels_kept"] == 1.0
    for metric, target in demo_conditional.TARGETS["i2v"].items():
        assert scores[metric] >= target, (metric, scores)


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
    return subprocess.run(
        [sys.executable, "-m", "lumiere_jax.main", "--config=configs/demo.py", f"--workdir={workdir}", "--mode=demo",
         *overrides], cwd=repo_root, env=dict(os.environ), capture_output=True, text=True, timeout=900)


def test_demo_mode_end_to_end(repo_root, tmp_path):
    workdir = tmp_path / "demo"
    proc = run_demo(repo_root, workdir, "--config.demo.samples_per_prompt=1", "--config.sample.num_steps=2",
                    "--config.demo.train_examples=32", "--config.demo.train_steps=6", "--config.demo.log_every=2",
                    "--config.data.batch_size=8")
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
