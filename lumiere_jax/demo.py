"""`--mode=demo`: the whole system on a laptop CPU in a few minutes (`./demo.sh`, configs/demo.py).

Three parts (the edits belong to the second), so each is seen working:
  samples   the committed demo checkpoint (config.sample.base_checkpoint) samples every prompt of
            config.sample (the combinations held out of its training) config.demo.samples_per_prompt
            times -> DIR/samples/: MP4, GIF, NPZ and a PNG contact sheet per clip, overview.gif (all
            clips playing side by side, one column per prompt) and overview.png, and the moving-shapes
            evaluation with held-out and seen scores (eval_report.json);
  tasks     the committed conditional checkpoint (config.demo.conditional_checkpoint) runs each of
            config.demo.conditional_tasks on inputs made from held-out clips (image-to-video: two first
            frames, each with the four direction words; inpainting and cinemagraphs: one clip of every
            held-out combination) through the sampling job -> DIR/tasks/TASK/: the input files and
            tasks.jsonl, the clips, overview.gif (top row the known pixels given, the rest grey;
            bottom row the result) and the task's scores;
  edits     with config.demo.edit_checkpoint, SDEdit (sample.strength) recolours one clip of every
            held-out combination with that model, its caption as the negative prompt
            -> DIR/tasks/edit/ (overview.gif: the input above, the edit below); with
            config.demo.style_checkpoint, the samples' prompts and seeds again with the style's spatial
            weights interpolated (sample.style_alpha) -> DIR/tasks/style/ (overview.gif: the samples
            above, the stylized clips below);
  training  config.demo.train_examples synthetic clips (held-out combinations excluded) -> DIR/data/,
            their captions encoded with config.text's encoder, then config.demo.train_steps steps of
            the same model from scratch -> DIR/train/ (TensorBoard, checkpoints, train_summary.json),
            the progress bar showing the loss fall. A few minutes show the loss falling; following the
            prompts took the committed checkpoint's 2,800 steps (the direction word last).
Everything is summarised in DIR/demo_report.json. Re-running into the same DIR replaces the previous
demo's outputs; any other non-empty DIR is refused, so the demo never deletes someone else's files.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import pathlib
import shutil
import sys
import time

import numpy as np

from lumiere_jax.evaluation.job import evaluate_samples, summary
from lumiere_jax.sample.job import load_prompts, sample
from lumiere_jax.sample.video_io import clips_sheet, tile_videos, to_uint8, write_gif, write_png
from lumiere_jax.train.trainer import train

REPORT_NAME = "demo_report.json"
OUTPUTS = ("samples", "tasks", "data", "train", REPORT_NAME)
I2V_IMAGES = 2  # first frames the image-to-video part animates, each with every direction word
UNKNOWN_GREY = 64  # how the overviews show the pixels a task generates
TASK_BATCH = 4  # clips per sampler call in every task: one program shape, compiled once (with a compilation cache)


def check_demo_config(config) -> None:
    d = config.demo
    for key in ("samples_per_prompt", "train_examples", "train_steps", "train_batch_size", "log_every"):
        if d[key] < 1:
            raise ValueError(f"demo.{key}={d[key]} must be >= 1")
    if d.train_examples < d.train_batch_size:
        raise ValueError(f"demo.train_examples={d.train_examples} is less than one batch "
                         f"(demo.train_batch_size={d.train_batch_size})")
    if not config.data.text_embeddings or config.text.encode_in_step:
        raise ValueError("the demo trains on precomputed caption embeddings: set data.text_embeddings=True "
                         "and text.encode_in_step=False")
    for key in ("style_checkpoint", "edit_checkpoint"):
        if d[key] and not (pathlib.Path(d[key]) / "params").is_dir():
            raise FileNotFoundError(f"demo.{key} {d[key]} is not an export (no params/ in it): point it at one "
                                    "(scripts/build_*_checkpoint.sh and --mode=export write them) or set it to ''")
    if d.conditional_checkpoint:
        from lumiere_jax.evaluation.conditional import EVAL_TASKS

        bad = [task for task in d.conditional_tasks if task not in EVAL_TASKS]
        if bad:
            raise ValueError(f"demo.conditional_tasks {bad} are not among {', '.join(EVAL_TASKS)}")
        if not (pathlib.Path(d.conditional_checkpoint) / "params").is_dir():
            raise FileNotFoundError(f"demo.conditional_checkpoint {d.conditional_checkpoint} is not an export; "
                                    "build it with scripts/build_conditional_checkpoint.sh or set it to ''")


def prepare_workdir(workdir: pathlib.Path) -> None:
    """Clears a previous demo's outputs; refuses a non-empty directory that is not a demo's."""
    if workdir.is_dir() and any(workdir.iterdir()):
        if not (workdir / REPORT_NAME).is_file() and not (workdir / "samples").is_dir():
            raise FileExistsError(f"--workdir {workdir} is not empty and holds no earlier demo; "
                                  "choose a new directory")
        for name in OUTPUTS:
            path = workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)


def read_frames(path) -> np.ndarray:
    with np.load(path) as data:
        return data["frames"]


def sample_checkpoint(config, directory: pathlib.Path) -> dict:
    """Samples the prompts with the committed checkpoint, writes the overviews, evaluates the clips."""
    prompts = load_prompts(config.sample)
    cfg = copy.deepcopy(config)
    cfg.sample.prompts_file = ""
    cfg.sample.prompts = prompts * config.demo.samples_per_prompt  # row r of the overview: the r-th draw
    report = sample(cfg, directory)
    clips = np.stack([read_frames(record["npz"]) for record in report["samples"]])
    write_gif(directory / "overview.gif", tile_videos(clips, len(prompts)), config.sample.fps)
    write_png(directory / "overview.png", clips_sheet(clips))
    evaluation = evaluate_samples(directory, heldout=config.eval.heldout)
    print(summary(evaluation), file=sys.stderr)
    return {"prompts": prompts, "clips": len(clips), "timings": report["timings"],
            "scores": {k: evaluation[k] for k in ("overall", "heldout", "seen") if evaluation.get(k)}}


def write_comparison(path: pathlib.Path, above: np.ndarray, below: np.ndarray, fps: float) -> None:
    """A GIF of two rows of clips playing side by side: what went in above, what came out below."""
    write_gif(path, tile_videos(np.concatenate([above, below]), len(below)), fps)


def edit_clips(config, directory: pathlib.Path) -> dict:
    """One colour edit of each held-out combination (the first other colour of the domain's list)."""
    from lumiere_jax.evaluation.conditional import edit_pairs, heldout_clips, score_edit, write_edit_requests

    clips = heldout_clips(config.eval.heldout, 1, config.data.num_frames, config.data.resolution)
    pairs = [edit_pairs([clip], "color")[0] for clip in clips]
    tasks_file = write_edit_requests(pairs, directory / "inputs", config.sample.fps)
    cfg = copy.deepcopy(config)
    cfg.sample.update(task="edit", tasks_file=str(tasks_file), prompts=[], prompts_file="", batch_size=TASK_BATCH,
                      base_checkpoint=config.demo.edit_checkpoint)
    report = sample(cfg, directory)
    inputs = np.stack([pair.clip.example.frames for pair in pairs])
    outputs = np.stack([read_frames(record["npz"]) for record in report["samples"]])
    write_comparison(directory / "overview.gif", inputs, outputs, config.sample.fps)
    scores = score_edit(directory, pairs, "color", config.eval.heldout)
    return dict(scores, prompts=[record["prompt"] for record in report["samples"]], strength=config.sample.strength)


def stylize(config, directory: pathlib.Path, samples: pathlib.Path) -> dict:
    """The samples' prompts and seeds again with the style interpolated in: the same program, new weights."""
    cfg = copy.deepcopy(config)
    cfg.sample.update(prompts=load_prompts(config.sample) * config.demo.samples_per_prompt, prompts_file="",
                      style_checkpoint=config.demo.style_checkpoint)
    report = sample(cfg, directory)
    base = np.stack([read_frames(path) for path in sorted(samples.glob("*.npz"))])
    styled = np.stack([read_frames(record["npz"]) for record in report["samples"]])
    write_comparison(directory / "overview.gif", base, styled, config.sample.fps)
    evaluation = evaluate_samples(directory, heldout=config.eval.heldout)
    return dict(evaluation["overall"], alpha=config.sample.style_alpha, num_clips=len(styled))


def conditional_tasks(config, directory: pathlib.Path) -> dict:
    """Each of config.demo.conditional_tasks with the conditional checkpoint; returns each task's scores."""
    from lumiere_jax.evaluation.conditional import heldout_clips, score_task, write_requests

    cfg = copy.deepcopy(config)
    cfg.sample.update(base_checkpoint=config.demo.conditional_checkpoint, prompts=[], prompts_file="",
                      batch_size=TASK_BATCH)
    frames, size, fps = config.data.num_frames, config.data.resolution, config.sample.fps
    results = {}
    for task in config.demo.conditional_tasks:
        clips = heldout_clips(config.eval.heldout, 1, frames, size, central=task == "i2v")
        tasks_file = write_requests(task, clips[:I2V_IMAGES] if task == "i2v" else clips, directory / task / "inputs",
                                    fps)
        cfg.sample.update(task=task, tasks_file=str(tasks_file))
        report = sample(cfg, directory / task)
        outputs = np.stack([read_frames(record["npz"]) for record in report["samples"]])
        given = np.stack([known_pixels(task, line, frames, size, fps) for line in tasks_file.read_text().splitlines()])
        write_comparison(directory / task / "overview.gif", given, outputs, fps)
        results[task] = score_task(task, directory / task, tasks_file, config.eval.heldout, fps)
        results[task]["prompts"] = [record["prompt"] for record in report["samples"]]
    return results


def known_pixels(task: str, line: str, frames: int, size: int, fps: float) -> np.ndarray:
    """uint8 (T, H, W, 3): what a request gives the model, the pixels to generate grey (the domain's
    background is black, so the region left to the model stays visible)."""
    from lumiere_jax.sample.tasks import Request, build_known, load_inputs

    clip, known, _ = build_known(task, load_inputs(task, Request(**json.loads(line)), frames, fps), size, frames)
    return np.where(known[..., None], to_uint8(clip), UNKNOWN_GREY).astype(np.uint8)


def make_training_data(config, directory: pathlib.Path) -> None:
    """Synthetic clips of the demo's domain and their caption embeddings, written by the project's
    own offline jobs (data_pipelines.synthetic, data_pipelines.encode_captions)."""
    from data_pipelines import encode_captions, synthetic

    with contextlib.redirect_stdout(io.StringIO()):  # the jobs' summaries are in their JSON files
        status = synthetic.main([
            "--output_dir", str(directory), "--num_examples", str(config.demo.train_examples),
            "--num_frames", str(config.data.num_frames), "--sizes", str(config.data.resolution),
            "--heldout", config.eval.heldout, "--seed", str(config.seed), "--num_shards", "2", "--workers", "1"])
        if status:
            raise RuntimeError(f"data_pipelines.synthetic failed (exit {status}); see {directory}")
        encode_captions.main(["--input", str(directory / "*.jsonl"), "--batch_size", "64"]
                             + [f"--{key}={config.text[key]}" for key in encode_captions.TEXT_OPTIONS])


def train_from_scratch(config, workdir: pathlib.Path) -> dict:
    """config.demo.train_steps steps of the demo model on freshly generated data."""
    make_training_data(config, workdir / "data")
    cfg = copy.deepcopy(config)
    steps = config.demo.train_steps
    cfg.data.sources = [{"glob": str(workdir / "data" / "*.array_record"), "weight": 1.0, "kind": "video"}]
    cfg.data.batch_size = config.demo.train_batch_size
    cfg.train.update(num_steps=steps, log_every=config.demo.log_every, checkpoint_every=steps, sample_every=0,
                     init_from="", warmup_steps=min(config.train.warmup_steps, max(1, steps // 5)))
    return train(cfg, workdir / "train")


def run_demo(config, workdir) -> dict:
    """Runs both halves; returns (and writes) the demo report."""
    workdir = pathlib.Path(workdir)
    check_demo_config(config)
    load_prompts(config.sample)  # no prompts: fail before anything is written
    prepare_workdir(workdir)
    start = time.perf_counter()
    print("== 1/3: sampling held-out prompts with the committed checkpoint", file=sys.stderr)
    samples = sample_checkpoint(config, workdir / "samples")
    sample_seconds = time.perf_counter() - start
    tasks = {}
    if config.demo.conditional_checkpoint:
        print(f"== 2/3: {', '.join(config.demo.conditional_tasks)} with the conditional checkpoint", file=sys.stderr)
        tasks = conditional_tasks(config, workdir / "tasks")
    if config.demo.edit_checkpoint:
        print(f"== 2/3: colour edits (SDEdit, strength {config.sample.strength})", file=sys.stderr)
        tasks["edit"] = edit_clips(config, workdir / "tasks" / "edit")
    if config.demo.style_checkpoint:
        print(f"== 2/3: the samples stylized (alpha {config.sample.style_alpha})", file=sys.stderr)
        tasks["style"] = stylize(config, workdir / "tasks" / "style", workdir / "samples")
    print(f"== 3/3: training the same model from scratch for {config.demo.train_steps} steps", file=sys.stderr)
    trained = train_from_scratch(config, workdir)
    losses = trained["losses"]
    report = {
        "samples": dict(samples, directory=str(workdir / "samples"), seconds=round(sample_seconds, 1)),
        "tasks": {"directory": str(workdir / "tasks"), **tasks},
        "training": {"directory": str(workdir / "train"), "steps": trained["step"], "losses": losses,
                     "first_loss": losses[0], "last_loss": losses[-1], "wall_seconds": trained["wall_seconds"]},
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    (workdir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report


def describe(report: dict, workdir) -> str:
    """What was made and where, for the terminal."""
    workdir = pathlib.Path(workdir)
    s, t = report["samples"], report["training"]
    held = s["scores"].get("heldout") or s["scores"]["overall"]
    return "\n".join([
        f"samples ({s['clips']} clips of {len(s['prompts'])} prompts not seen in training): {s['directory']}/",
        f"  overview.gif (one column per prompt: {'; '.join(s['prompts'])}), overview.png, NNN_prompt.mp4/.gif/.png",
        (f"  held-out scores: colour {held['color_accuracy']:.0%}, direction {held['direction_accuracy']:.0%}, "
         f"presence {held['presence_rate']:.0%} (eval_report.json)"),
        *[f"{task}: {describe_task(task, scores)} ({report['tasks']['directory']}/{task}/overview.gif)"
          for task, scores in report["tasks"].items() if task != "directory"],
        (f"training from scratch: loss {t['first_loss']:.3f} -> {t['last_loss']:.3f} in {t['steps']} steps: "
         f"{t['directory']}/ (tensorboard --logdir {t['directory']}/tensorboard)"),
        f"report: {workdir / REPORT_NAME}",
    ])


def describe_task(task: str, scores: dict) -> str:
    if task == "edit":
        return (f"new colour {scores['edit_success']:.0%}, direction kept {scores['direction_kept']:.0%}, "
                f"track {scores['track_distance_px']:.1f} px from the input's")
    if task == "style":
        return (f"background {scores['background_level']:.2f} (alpha {scores['alpha']}), direction "
                f"{scores['direction_accuracy']:.0%}, presence {scores['presence_rate']:.0%}")
    parts = [f"direction {scores['direction_accuracy']:.0%}", f"presence {scores['presence_rate']:.0%}"]
    if "masked_presence_rate" in scores:
        parts.append(f"presence where filled {scores['masked_presence_rate']:.0%}")
    parts.append(f"known pixels kept {scores['known_pixels_kept']:.0%}")
    if "outside_region_constant" in scores:
        parts.append(f"still outside the region {scores['outside_region_constant']:.0%}")
    return ", ".join(parts)
