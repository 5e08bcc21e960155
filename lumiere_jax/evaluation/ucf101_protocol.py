"""`eval.protocol=ucf101_zero_shot`: the zero-shot UCF101 comparison of Make-A-Video and Lumiere.

A model never trained on UCF101 generates N videos (eval.num_samples: 2,048 or 10,000 in the
literature) from class prompts, the classes drawn in the proportions of the reference set, and
is scored on their first 16 frames by FVD against UCF101 clips (I3D) and by the Inception Score
(C3D fine-tuned on UCF101). The reference is UCF101 written by data_pipelines.tfds_to_shards
(its records carry the class in meta['label']; one clip per video with a large --stride):

    python -m data_pipelines.tfds_to_shards --dataset ucf101 --split test --num_frames 16 \\
        --stride 1000 --sizes 128 --output_dir data/ucf101_test

Prompts: eval.prompt_template over the class name in words ('apply eye makeup'), or
eval.prompts_file, a JSON object {class: prompt}. Frames are resized by the networks' own
preprocessing (I3D: 224x224 bilinear, C3D: 112x112), so reference and samples are treated alike.
The report puts the papers' rows beside ours and states N, frames and splits; numbers computed
with a different N, clip length or split count are not comparable.
"""
from __future__ import annotations

import collections
import glob
import json
import pathlib

from lumiere_jax.data.shards import iter_views
from lumiere_jax.evaluation.video_metrics import check_eval_config, metrics_table, network_metrics
from lumiere_jax.evaluation.video_sets import SampledSet

PROTOCOLS = ("ucf101_zero_shot",)
PROTOCOL_FRAMES = 16
PAPER_ROWS = (
    {"model": "Lumiere (paper)", "fvd": 332.49, "inception_score": 37.54},
    {"model": "Make-A-Video (paper)", "fvd": 367.23, "inception_score": 33.00},
)
PROMPTS_NAME = "protocol_prompts.txt"


def reference_class_counts(pattern: str) -> collections.Counter:
    """How many reference clips each class has, read from record headers (no frame is decoded).
    A record without meta['label'] counts under its caption."""
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise ValueError(f"eval.reference={pattern!r} matches no shards; write UCF101 with "
                         "data_pipelines.tfds_to_shards (see lumiere_jax/evaluation/ucf101_protocol.py)")
    counts = collections.Counter()
    for path in paths:
        for view in iter_views(path):
            counts[view.meta.get("label") or view.caption] += 1
    return counts


def allocate(counts: collections.Counter, total: int) -> list[str]:
    """`total` class names in the proportions of `counts`: floors, then the largest remainders
    (ties by name), so the list is deterministic and sums to `total` exactly."""
    classes = sorted(counts)
    size = sum(counts.values())
    exact = {c: total * counts[c] / size for c in classes}
    per_class = {c: int(exact[c]) for c in classes}
    by_remainder = sorted(classes, key=lambda c: (-(exact[c] - per_class[c]), c))
    for c in by_remainder[: total - sum(per_class.values())]:
        per_class[c] += 1
    return [c for c in classes for _ in range(per_class[c])]


def class_prompts(classes, e) -> dict[str, str]:
    """The prompt of each class: eval.prompts_file's, else eval.prompt_template's."""
    if e.prompts_file:
        path = pathlib.Path(e.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"eval.prompts_file {path} does not exist")
        try:
            given = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"eval.prompts_file {path} is not a JSON object {{class: prompt}}: {err}") from err
        missing = [c for c in classes if not isinstance(given, dict) or not str(given.get(c, "")).strip()]
        if missing:
            raise ValueError(f"eval.prompts_file {path} has no prompt for {len(missing)} classes: {missing[:5]}")
        return {c: str(given[c]).strip() for c in classes}
    if "{label}" not in e.prompt_template:
        raise ValueError(f"eval.prompt_template={e.prompt_template!r} must contain {{label}}")
    return {c: e.prompt_template.format(label=c) for c in classes}


def check_protocol(config) -> None:
    e = config.eval
    if e.protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol={e.protocol!r}: choose one of {', '.join(PROTOCOLS)} (or '' for none)")
    if e.num_frames != PROTOCOL_FRAMES:
        raise ValueError(f"{e.protocol} scores {PROTOCOL_FRAMES} frames; eval.num_frames={e.num_frames}")
    if not isinstance(e.num_samples, int) or e.num_samples < e.is_splits:
        raise ValueError(f"eval.num_samples={e.num_samples!r} must be at least eval.is_splits={e.is_splits}")
    if not e.reference:
        raise ValueError(f"{e.protocol} needs eval.reference: UCF101 clip shards (tfds_to_shards)")


def run_protocol(config, workdir, progress: bool = True) -> tuple[dict, str]:
    """Samples the protocol's prompts into WORKDIR (config.sample says with which model), then FVD and IS."""
    from lumiere_jax.sample.job import sample

    check_protocol(config)
    e = config.eval
    check_eval_config(e, ["fvd", "is"])
    workdir = pathlib.Path(workdir)
    counts = reference_class_counts(e.reference)
    labels = allocate(counts, e.num_samples)
    prompts = class_prompts(sorted(counts), e)
    workdir.mkdir(parents=True, exist_ok=True)
    prompts_path = workdir / PROMPTS_NAME
    prompts_path.write_text("".join(prompts[label] + "\n" for label in labels))
    sampling = config.copy_and_resolve_references()
    sampling.sample.prompts_file = str(prompts_path)
    sampling.sample.tasks_file = ""
    sampling.sample.task = "t2v"
    sample(sampling, workdir)
    generated = SampledSet(workdir)
    reports = network_metrics(config, generated, workdir, ["fvd", "is"], progress=progress)
    ours = {"model": "ours", "fvd": reports["fvd"]["fvd"], "inception_score": reports["is"]["inception_score"]}
    report = {
        "protocol": e.protocol, "num_samples": e.num_samples, "num_frames": e.num_frames, "is_splits": e.is_splits,
        "classes": len(counts), "class_distribution": dict(sorted(counts.items())), "rows": [*PAPER_ROWS, ours],
        "metrics": reports, "skipped_samples": generated.skipped,
        "note": "the paper rows are as published, with their own sample counts and splits; FVD and IS move with "
                "N, frames and splits, so compare only at the same ones",
    }
    return report, protocol_table(report) + "\n" + metrics_table(reports, generated.skipped)


def protocol_table(report: dict) -> str:
    lines = [f"{report['protocol']}: {report['num_samples']} samples over {report['classes']} classes, "
             f"{report['num_frames']} frames, IS over {report['is_splits']} splits",
             f"{'':<24} {'FVD':>8} {'IS':>7}"]
    lines += [f"{row['model']:<24} {row['fvd']:>8.2f} {row['inception_score']:>7.2f}" for row in report["rows"]]
    return "\n".join(lines)
