"""Scoring the conditional tasks and edits on the moving-shapes domain: requests from held-out clips, scores.

The inputs are clips of the combinations held out of training (data_pipelines.synthetic's heldout
split, a seed the training data did not use), written as files a user would give the sampling job
(PNG first frames, lossless FFV1 videos) with one `sample.tasks_file` line per clip:

  i2v          the first frame of a held-out clip whose object starts near the centre (room to move
               every way), once with each of the four direction words;
  inpaint      the clip, with a box over the object's path on the middle half of the frames to fill;
  outpaint     the centre half of every frame (the 16x16 centre of a 32x32 clip), the border to fill;
  cinemagraph  the first frame, with the box around the object's whole path as the moving region.

`score_task` runs the moving-shapes evaluator on the sampled clips and adds what each task must keep:
frame 0 equal to the image (i2v), every known pixel equal to the input (inpaint, outpaint), the
pixels outside the region constant over time (cinemagraph), and presence inside the filled frames.
Edits (`edit_pairs`, `write_edit_requests`, `score_edit`) give a held-out clip with its caption's colour
(or shape) changed to each other one, its own caption as the negative prompt, and measure both sides of
SDEdit: the new prompt followed, the input's direction and track kept.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
from PIL import Image

from data_pipelines.synthetic import COLORS, DIRECTIONS, SHAPES, caption, combos, make_example, parse_heldout
from lumiere_jax.evaluation.job import evaluate_samples
from lumiere_jax.evaluation.video_sets import read_samples, resolve
from lumiere_jax.evaluation.synthetic import analyze_clip
from lumiere_jax.sample.tasks import Request, build_known, load_inputs
from lumiere_jax.sample.video_io import to_uint8, write_lossless_video

EVAL_TASKS = ("i2v", "inpaint", "outpaint", "cinemagraph")
CENTRAL = (0.38, 0.62)  # i2v start positions (frame widths) that leave room to move in every direction
INPUT_SEED = 1  # the training data is seed 0


@dataclasses.dataclass
class HeldoutClip:
    example: object  # the ClipRecord
    combo: tuple


def heldout_clips(heldout: str, per_combo: int, num_frames: int, size: int, central: bool = False) -> list:
    """`per_combo` clips of every held-out combination, in a fixed order (combination, then index)."""
    patterns = parse_heldout(heldout)
    settings = dict(seed=INPUT_SEED, split="heldout", kind="video", heldout=patterns, num_frames=num_frames,
                    sizes=[size], fps=16.0)
    found: dict[tuple, list] = {}
    wanted = len(combos("video", "heldout", patterns))
    index = 0
    while True:
        example = make_example(index, settings)
        index += 1
        combo = (example.meta["color"], example.meta["shape"], example.meta["direction"])
        if central and not np.all((example.annotations["positions"][0] >= CENTRAL[0])
                                  & (example.annotations["positions"][0] <= CENTRAL[1])):
            continue
        bucket = found.setdefault(combo, [])
        if len(bucket) < per_combo:
            bucket.append(HeldoutClip(example, combo))
        if len(found) == wanted and all(len(b) == per_combo for b in found.values()):
            return [clip for combo in sorted(found) for clip in found[combo]]
        if index > 100_000:
            raise RuntimeError("could not find enough held-out clips with the requested start positions")


def path_box(example, frames: slice, margin_px: float = 1.0) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) pixels around the object on `frames`: its centres ± (radius + margin)."""
    size = example.frames.shape[1]
    positions = example.annotations["positions"][frames] * size
    reach = example.meta["radius"] * size + margin_px
    x0, y0 = np.maximum(positions.min(0) - reach, 0)
    x1, y1 = np.minimum(positions.max(0) + reach, size)
    return float(x0), float(y0), float(x1), float(y1)


def write_requests(task: str, clips: list, directory: pathlib.Path, fps: float) -> pathlib.Path:
    """Writes the input files of `task` for `clips` and the tasks_file naming them; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, clip in enumerate(clips):
        frames = clip.example.frames
        t, size = frames.shape[0], frames.shape[1]
        if task in ("i2v", "cinemagraph"):
            path = directory / f"{i:03d}_first_frame.png"
            Image.fromarray(frames[0]).save(path)
        else:
            path = directory / f"{i:03d}_clip.mkv"
            centre = frames[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] if task == "outpaint" else frames
            write_lossless_video(path, centre, fps)
        if task == "i2v":
            lines += [{"prompt": caption(*clip.combo[:2], d), "input": str(path)} for d in DIRECTIONS]
        elif task == "inpaint":
            x0, y0, x1, y1 = path_box(clip.example, slice(t // 4, 3 * t // 4))
            box = f"{x0:.2f},{y0:.2f},{x1:.2f},{y1:.2f},{t // 4},{3 * t // 4}"
            lines.append({"prompt": caption(*clip.combo), "input": str(path), "mask": box})
        elif task == "outpaint":
            lines.append({"prompt": caption(*clip.combo), "input": str(path), "outpaint": str(size // 4)})
        elif task == "cinemagraph":
            box = ",".join(f"{v:.2f}" for v in path_box(clip.example, slice(None)))
            lines.append({"prompt": caption(*clip.combo), "input": str(path), "mask": box})
        else:
            raise ValueError(f"no evaluation requests for task {task!r}; choose one of {EVAL_TASKS}")
    tasks_file = directory / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tasks_file


def score_task(task: str, workdir: pathlib.Path, tasks_file: pathlib.Path, heldout: str, fps: float) -> dict:
    """The evaluator's scores of a sampling run of `task` plus the task's own checks (see the module doc)."""
    report = evaluate_samples(workdir, heldout=heldout)
    scores = dict(report["overall"])
    requests = [Request(**json.loads(line)) for line in tasks_file.read_text().splitlines() if line.strip()]
    samples = read_samples(workdir)
    kept, masked_present, masked_total, constant = [], 0, 0, []
    for request, sample, record in zip(requests, samples, report["clips"]):
        with np.load(resolve(workdir, sample["npz"])) as data:
            frames = data["frames"]
        t, size = frames.shape[:2]
        clip, known, _ = build_known(task, load_inputs(task, request, t, fps), size, t)
        kept.append(bool(np.array_equal(frames[known], to_uint8(clip)[known])))
        filled = ~known.all(axis=(1, 2))
        if task != "i2v":
            masked_total += int(filled.sum())
            masked_present += sum(record["centroids"][i] is not None for i in np.flatnonzero(filled))
        if task == "cinemagraph":
            constant.append(bool((frames[:, known[1]] == frames[:1, known[1]]).all()))
    scores["known_pixels_kept"] = float(np.mean(kept))  # i2v: frame 0 equals the image
    if masked_total:
        scores["masked_presence_rate"] = masked_present / masked_total
    if constant:
        scores["outside_region_constant"] = float(np.mean(constant))
    return scores


EDITS = ("color", "shape")  # what an edit request changes in a held-out clip's caption


@dataclasses.dataclass
class EditPair:
    clip: HeldoutClip
    target: tuple  # the combination the edited caption names


def edit_pairs(clips: list, change: str) -> list[EditPair]:
    """Every clip with its colour (or shape) replaced by each other one of the domain's: all the
    edits of that kind, as some (green to blue: every channel swapped) are much harder than others."""
    index = EDITS.index(change)
    values = list(COLORS) if change == "color" else list(SHAPES)
    return [EditPair(clip, clip.combo[:index] + (value,) + clip.combo[index + 1:])
            for clip in clips for value in values if value != clip.combo[index]]


def write_edit_requests(pairs: list, directory: pathlib.Path, fps: float, negative: bool = True) -> pathlib.Path:
    """One edit request per pair: the held-out clip (a lossless video) and the edited caption;
    `negative`: the clip's own caption is the request's negative prompt."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, pair in enumerate(pairs):
        path = directory / f"{i:03d}_clip.mkv"
        write_lossless_video(path, pair.clip.example.frames, fps)
        line = {"prompt": caption(*pair.target), "input": str(path)}
        lines.append(dict(line, negative_prompt=caption(*pair.clip.combo)) if negative else line)
    tasks_file = directory / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tasks_file


def score_edit(workdir: pathlib.Path, pairs: list, change: str, heldout: str) -> dict:
    """The evaluator's scores of edited clips against their new prompts, plus how much of the input is
    kept: its direction, and the object's track (mean distance in pixels over frames where both the
    input's and the output's object are found); `edit_success` also per source > target value."""
    report = evaluate_samples(workdir, heldout=heldout)
    scores = dict(report["overall"])
    size = pairs[0].clip.example.frames.shape[1]
    index = EDITS.index(change)
    kept, distances, by_value = [], [], {}
    for pair, record in zip(pairs, report["clips"]):
        source = analyze_clip(pair.clip.example.frames.astype(np.float32) / 255.0)
        kept.append(record["direction"] == pair.clip.combo[2])
        by_value.setdefault(f"{pair.clip.combo[index]}>{pair.target[index]}", []).append(
            record[change] == pair.target[index])
        centroids = zip(source["centroids"], record["centroids"])
        distances += [float(np.hypot(*np.subtract(a, b))) * size for a, b in centroids if a is not None and b is not None]
    scores["edit_success"] = scores[f"{change}_accuracy"]
    scores["direction_kept"] = float(np.mean(kept))
    scores["track_distance_px"] = float(np.mean(distances)) if distances else None
    scores["edit_success_by_value"] = {k: float(np.mean(v)) for k, v in sorted(by_value.items())}
    return scores
