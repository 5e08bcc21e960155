"""`--mode=eval`: scores the clips of a sampling run (WORKDIR/samples.json) -> WORKDIR/eval_report.json.

`eval.metrics` chooses the scores: `shapes` (the moving-shapes evaluator, below) and the field's
network metrics `fvd`, `is`, `clip` (video_metrics.py), reported under 'metrics'.

Clips the job sampled in windows shorter than themselves (samples.json's 'windows', or a layout
given here) also get the evaluator's seam measure; `eval.motion=stationary` reads wrapping motion.

A sample that cannot be scored (a prompt outside the moving-shapes grammar, a missing or corrupt
.npz, frames of the wrong shape) is skipped and listed with its reason, so one bad file does not
lose the rest of the run; a run with nothing scorable is an error.
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional

from tqdm import tqdm

from data_pipelines.synthetic import parse_heldout
from lumiere_jax.evaluation.synthetic import build_report, check_layout, check_motion, score_clip
from lumiere_jax.evaluation.video_metrics import (
    NETWORK_METRICS,
    check_eval_config,
    metrics_table,
    network_metrics,
    parse_metrics,
)
from lumiere_jax.evaluation.video_sets import SampledSet, load_frames, read_samples

REPORT_NAME = "eval_report.json"


def sampled_layout(workdir: pathlib.Path) -> Optional[dict]:
    """The window layout --mode=sample recorded in samples.json for clips longer than the model's
    window ({'window', 'overlap', 'aggregation'}), or None."""
    try:
        return json.loads((workdir / "samples.json").read_text()).get("windows")
    except (OSError, ValueError, AttributeError):
        return None  # read_samples says what is wrong with the file


def evaluate_samples(workdir, progress: bool = True, heldout: str = "", motion: str = "traverse",
                     layout: Optional[dict] = None) -> dict:
    """Scores every sample of WORKDIR/samples.json, writes WORKDIR/eval_report.json, returns it.
    `heldout` (data_pipelines.synthetic --heldout syntax) adds held-out and seen scores; `motion`
    is the clips' (eval.motion); `layout` ({'window', 'overlap', 'aggregation'}; default: what the
    sampling job recorded) adds seam measures to clips longer than the window."""
    parse_heldout(heldout)  # a bad list fails before the slow part
    check_motion(motion)
    workdir = pathlib.Path(workdir)
    samples = read_samples(workdir)
    layout = check_layout(layout if layout is not None else sampled_layout(workdir))
    records, skipped = [], []
    for index, sample in enumerate(tqdm(samples, desc="eval", disable=not progress)):
        try:
            record = score_clip(load_frames(workdir, sample), str(sample["prompt"]), motion, layout)
        except ValueError as e:
            skipped.append({"index": index, "prompt": sample.get("prompt"), "reason": str(e)})
            continue
        records.append({"index": index, "npz": str(sample["npz"]), **record})
    if not records:
        reasons = "; ".join(f"#{s['index']}: {s['reason']}" for s in skipped[:5])
        raise ValueError(f"none of the {len(samples)} samples in {workdir / 'samples.json'} could be scored "
                         f"({reasons})")
    report = {**build_report(records, heldout), "skipped": skipped}
    if layout is not None:
        report["windows"] = layout
    (workdir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report


def evaluate(config, workdir, progress: bool = True) -> tuple[dict, str]:
    """`--mode=eval`: the report of every metric in eval.metrics (written to WORKDIR/eval_report.json) and
    its summary table."""
    workdir = pathlib.Path(workdir)
    if config.eval.protocol:
        from lumiere_jax.evaluation.ucf101_protocol import run_protocol

        report, table = run_protocol(config, workdir, progress)
        (workdir / REPORT_NAME).write_text(json.dumps(report, indent=2))
        return report, table
    metrics = parse_metrics(config.eval.metrics)
    check_eval_config(config.eval, metrics)
    report, tables = {}, []
    if "shapes" in metrics:
        report = evaluate_samples(workdir, progress, config.eval.heldout, config.eval.get("motion", "traverse"))
        tables.append(summary(report))
    networks = [m for m in metrics if m in NETWORK_METRICS]
    if networks:
        generated = SampledSet(workdir)
        report["metrics"] = network_metrics(config, generated, workdir, networks, progress=progress)
        report["skipped_samples"] = generated.skipped
        tables.append(metrics_table(report["metrics"], generated.skipped))
        (workdir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report, "\n".join(tables)


def _line(name: str, scores: dict) -> str:
    optional = [("-" if scores[k] is None else f"{scores[k]:.{digits}f}") for k, digits in
                (("trajectory_jitter", 4), ("shape_fit", 3))]
    return (f"{name:<24} {scores['num_clips']:>5}  {scores['color_accuracy']:>6.1%} {scores['shape_accuracy']:>6.1%}"
            f" {scores['direction_accuracy']:>6.1%} {scores['presence_rate']:>7.1%}  {optional[0]:>7} {optional[1]:>5}")


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}"


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
    overall = report["overall"]
    if "seam_ratio" in overall:
        layout = report.get("windows", {})
        lines.append(f"seams ({overall['clips_with_seams']} clips, {layout.get('window')}-frame windows, overlap "
                     f"{layout.get('overlap')}, {layout.get('aggregation')}): seam ratio {_num(overall['seam_ratio'])} "
                     f"(median {_num(overall['median_seam_ratio'])}, worst {_num(overall['worst_seam_ratio'])}), "
                     f"max step ratio {_num(overall['max_step_ratio'])}; "
                     "largest step across a window boundary / median step (1: no seam)")
    if report.get("skipped"):
        lines.append(f"skipped {len(report['skipped'])} samples (reasons in the report's 'skipped')")
    return "\n".join(lines)
