"""`--mode=eval`: scores the clips of a sampling run (WORKDIR/samples.json) -> WORKDIR/eval_report.json.

A sample that cannot be scored (a prompt outside the moving-shapes grammar, a missing or corrupt
.npz, frames of the wrong shape) is skipped and listed with its reason, so one bad file does not
lose the rest of the run; a run with nothing scorable is an error.
"""
from __future__ import annotations

import json
import pathlib
import zipfile

import numpy as np
from tqdm import tqdm

from data_pipelines.synthetic import parse_heldout
from lumiere_jax.evaluation.synthetic import build_report, score_clip, to_unit_range

REPORT_NAME = "eval_report.json"


def read_samples(workdir: pathlib.Path) -> list[dict]:
    """The `samples` list of WORKDIR/samples.json, as written by --mode=sample."""
    path = workdir / "samples.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run --mode=sample with this --workdir first")
    try:
        samples = json.loads(path.read_text())["samples"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a samples.json of --mode=sample (a JSON object with a 'samples' list): "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples):
        raise ValueError(f"{path}: 'samples' must be a list of objects with 'prompt' and 'npz'")
    return samples


def resolve(workdir: pathlib.Path, name: str) -> pathlib.Path:
    """The sampling job records paths as it was given them, so a relative workdir makes relative
    paths; those are looked up as given, then beside samples.json, where the job writes them."""
    path = pathlib.Path(name)
    return path if path.is_file() else workdir / path.name


def load_frames(workdir: pathlib.Path, sample: dict) -> np.ndarray:
    """One sample's (T, H, W, 3) frames in [0, 1]; ValueError saying what is wrong with it."""
    if "prompt" not in sample or "npz" not in sample:
        raise ValueError("the entry has no 'prompt' or no 'npz'")
    path = resolve(workdir, str(sample["npz"]))
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        with np.load(path) as data:
            frames = data["frames"]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as e:
        # TypeError: a plain .npy loads as an array, which is no context manager.
        raise ValueError(f"{path} is not an .npz with a 'frames' array: {type(e).__name__}: {e}") from e
    if frames.ndim != 4:
        raise ValueError(f"{path}: frames must be (T, H, W, 3), got shape {frames.shape}")
    return to_unit_range(frames[None])[0]


def evaluate_samples(workdir, progress: bool = True, heldout: str = "") -> dict:
    """Scores every sample of WORKDIR/samples.json, writes WORKDIR/eval_report.json, returns it.
    `heldout` (data_pipelines.synthetic --heldout syntax) adds held-out and seen scores."""
    parse_heldout(heldout)  # a bad list fails before the slow part
    workdir = pathlib.Path(workdir)
    samples = read_samples(workdir)
    records, skipped = [], []
    for index, sample in enumerate(tqdm(samples, desc="eval", disable=not progress)):
        try:
            record = score_clip(load_frames(workdir, sample), str(sample["prompt"]))
        except ValueError as e:
            skipped.append({"index": index, "prompt": sample.get("prompt"), "reason": str(e)})
            continue
        records.append({"index": index, "npz": str(sample["npz"]), **record})
    if not records:
        reasons = "; ".join(f"#{s['index']}: {s['reason']}" for s in skipped[:5])
        raise ValueError(f"none of the {len(samples)} samples in {workdir / 'samples.json'} could be scored "
                         f"({reasons})")
    report = {**build_report(records, heldout), "skipped": skipped}
    (workdir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report


def _line(name: str, scores: dict) -> str:
    optional = [("-" if scores[k] is None else f"{scores[k]:.{digits}f}") for k, digits in
                (("trajectory_jitter", 4), ("shape_fit", 3))]
    return (f"{name:<24} {scores['num_clips']:>5}  {scores['color_accuracy']:>6.1%} {scores['shape_accuracy']:>6.1%}"
            f" {scores['direction_accuracy']:>6.1%} {scores['presence_rate']:>7.1%}  {optional[0]:>7} {optional[1]:>5}")


def summary(report: dict) -> str:
    """A short table: overall scores, then per combination, then the skip count."""
    header = ("", "clips", "colour", "shape", "dir", "present", "jitter", "fit")
    lines = ["{:<24} {:>5}  {:>6} {:>6} {:>6} {:>7}  {:>7} {:>5}".format(*header), _line("overall", report["overall"])]
    lines += [_line(side, report[side]) for side in ("heldout", "seen") if report.get(side)]
    lines += [_line(key, scores) for key, scores in report["per_combination"].items()]
    chance = report["chance"]
    lines.append(f"chance: colour {chance['color_accuracy']:.1%}, shape {chance['shape_accuracy']:.1%}, direction "
                 f"{chance['direction_accuracy']:.1%}. jitter: RMS frame-to-frame acceleration of the centroid, "
                 "in frame widths (0 = constant velocity). fit: share of the object the fitted shape explains "
                 "(1 = all)")
    if report.get("skipped"):
        lines.append(f"skipped {len(report['skipped'])} samples (reasons in the report's 'skipped')")
    return "\n".join(lines)
