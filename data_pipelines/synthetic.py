"""Captioned "moving shapes" clips (or images) with ground-truth positions, for tests and demos.

    python -m data_pipelines.synthetic --output_dir data/shapes --num_examples 2048 \\
        --heldout red:circle:left,blue:square:up
    python -m data_pipelines.synthetic --output_dir data/shapes_heldout --split heldout \\
        --heldout red:circle:left,blue:square:up --num_examples 64
    python -m data_pipelines.synthetic --output_dir data/shapes_images --kind image
    python -m data_pipelines.synthetic --output_dir data/shapes_long --motion stationary --num_frames 64

A clip shows one shape of one colour on black, moving in a straight line at constant speed,
captioned "a {color} {shape} moving {direction}"; an image is one frame captioned
"a {color} {shape}". Each record stores the shape's centre in every frame as
annotations['positions'] (T, 2): (x, y) in [0, 1] image coordinates, x to the right, y down,
and meta {color, shape, direction, radius, split}.

--motion chooses how the shape moves:
  traverse    (default) one straight path inside the frame covering TRAVEL_RANGE of the free room
              over the whole clip, however long: every clip is one traversal, so a longer clip is
              slower, and a window of a long clip is not a clip of this domain.
  stationary  the frame is a torus: the shape keeps its speed for any number of frames (SPEED_RANGE
              frame widths per frame, so a 16-frame training clip covers 0.24-0.48 of the frame)
              and wraps around, leaving one border as it enters at the opposite one. Wrapping rather
              than bouncing keeps the caption true: a bounce would turn "moving left" into moving
              right, a wrap never does, so every window of a long clip is a clip of the domain with
              the same caption (the long-clip training and evaluation data). meta adds motion and
              speed (frame widths per frame); positions are the centre's place on the torus, in [0, 1).

Held-out combinations (--heldout color:shape:direction, '*' matching anything) never appear in
the train split; the heldout split contains only them. Example i is drawn from a generator
seeded by (seed, split, kind, i), so the data does not depend on shard or worker counts.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from typing import Any, Optional, Sequence

import numpy as np

from data_pipelines import runner
from lumiere_jax.data.schema import ClipRecord

JOB = "synthetic"
COLORS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPLITS = ("train", "heldout")
KINDS = ("video", "image")
MOTIONS = ("traverse", "stationary")
RADIUS_RANGE = (0.08, 0.15)  # shape radius, as a fraction of the frame size
TRAVEL_RANGE = (0.3, 0.6)  # distance covered over the clip, as a fraction of the free room
# Stationary motion: frame widths per frame. A 16-frame clip moves 0.24-0.48 of the frame (about the
# traversal's 0.21-0.5 at 16 frames), so a training window never crosses the frame; 33-67 frames do.
SPEED_RANGE = (0.015, 0.03)

Combo = tuple[str, str, Optional[str]]  # (color, shape, direction); direction None for images


def caption(color: str, shape: str, direction: Optional[str]) -> str:
    return f"a {color} {shape}" if direction is None else f"a {color} {shape} moving {direction}"


def parse_heldout(text: str) -> list[tuple[str, str, str]]:
    """'red:circle:left,*:square:up' -> [('red','circle','left'), ('*','square','up')]."""
    patterns = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        parts = entry.split(":")
        if len(parts) != 3:
            raise ValueError(f"held-out entry {entry!r} must be color:shape:direction ('*' matches any)")
        for value, allowed, what in zip(parts, (COLORS, SHAPES, DIRECTIONS), ("color", "shape", "direction")):
            if value != "*" and value not in allowed:
                raise ValueError(f"held-out entry {entry!r}: {what} {value!r} is not one of {sorted(allowed)} or '*'")
        patterns.append(tuple(parts))
    return patterns


def is_heldout(combo: Combo, patterns: Sequence[tuple[str, str, str]]) -> bool:
    """A pattern matches when every part is '*' or equal; an image (direction None) is only
    held out by patterns whose direction is '*', since it shows no motion."""
    return any(all(p == "*" or p == v for p, v in zip(pattern, combo)) for pattern in patterns)


def combos(kind: str, split: str, patterns: Sequence[tuple[str, str, str]]) -> list[Combo]:
    """Every (color, shape, direction) the split may draw from, in a fixed order."""
    directions: Sequence[Optional[str]] = list(DIRECTIONS) if kind == "video" else [None]
    every = list(itertools.product(COLORS, SHAPES, directions))
    return [c for c in every if is_heldout(c, patterns) == (split == "heldout")]


def seen_prompts(heldout: str, count: int) -> list[str]:
    """`count` trained-on combinations spread evenly over the grid of colours, shapes and directions."""
    patterns = parse_heldout(heldout)
    grid = [(c, s, d) for c in COLORS for s in SHAPES for d in DIRECTIONS if not is_heldout((c, s, d), patterns)]
    picks = np.linspace(0, len(grid) - 1, count).round().astype(int)
    return [caption(*grid[i]) for i in picks]


def shape_mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Pixels (sampled at their centres) inside a shape of circumradius r centred at (cx, cy),
    all in pixels. The triangle is equilateral, pointing up, centroid at the centre, so the
    centroid of the drawn pixels is the stored position for every shape."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = r / np.sqrt(2.0)
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # Equilateral triangle with vertices at angles 90, 210, 330 degrees (y down): inside all
    # three edges, each at distance r/2 from the centre along its outward normal.
    normals = ((0.0, 1.0), (np.sqrt(3) / 2, -0.5), (-np.sqrt(3) / 2, -0.5))
    return np.logical_and.reduce([dx * nx + dy * ny <= r / 2 for nx, ny in normals])


def render(combo: Combo, positions: np.ndarray, radius: float, size: int, background=(0, 0, 0),
           wrap: bool = False) -> np.ndarray:
    """(T, size, size, 3) uint8 frames of the shape at `positions` (normalised centres) on `background`.

    `wrap` draws the frame as a torus: the shape is also drawn one frame width away on each side,
    so the part that leaves across a border shows at the opposite one."""
    color, shape, _ = combo
    frames = np.zeros((len(positions), size, size, 3), np.uint8)
    frames[:] = background
    shifts = (-1.0, 0.0, 1.0) if wrap else (0.0,)
    for t, (x, y) in enumerate(positions):
        mask = np.logical_or.reduce([shape_mask(shape, size, (x + dx) * size, (y + dy) * size, radius * size)
                                     for dx in shifts for dy in shifts])
        frames[t][mask] = COLORS[color]
    return frames


def trajectory(rng: np.random.Generator, direction: Optional[str], num_frames: int, radius: float) -> np.ndarray:
    """(T, 2) normalised centres: a straight constant-speed path that stays inside the frame."""
    lo, hi = radius, 1.0 - radius
    if direction is None:
        return rng.uniform(lo, hi, size=(1, 2))
    ux, uy = DIRECTIONS[direction]
    travel = rng.uniform(*TRAVEL_RANGE) * (hi - lo)
    along_start = rng.uniform(lo, hi - travel)  # start coordinate along the motion, before orientation
    across = rng.uniform(lo, hi)
    s = np.linspace(0.0, travel, num_frames) if num_frames > 1 else np.zeros(1)
    along = along_start + s if (ux + uy) > 0 else (hi + lo) - (along_start + s)
    xs, ys = (along, np.full_like(along, across)) if ux else (np.full_like(along, across), along)
    return np.stack([xs, ys], axis=1)


def stationary_trajectory(rng: np.random.Generator, direction: str, num_frames: int,
                          radius: float) -> tuple[np.ndarray, float]:
    """((T, 2) normalised centres on the torus, in [0, 1); speed in frame widths per frame): a
    constant-speed path along `direction` from a uniform start, for any number of frames; across
    the motion the shape stays wholly inside the frame, as in `trajectory`."""
    ux, uy = DIRECTIONS[direction]
    speed = float(rng.uniform(*SPEED_RANGE))
    start = rng.uniform(0.0, 1.0, size=2)
    start[1 if ux else 0] = rng.uniform(radius, 1.0 - radius)  # the coordinate across the motion
    steps = np.arange(num_frames, dtype=np.float64)[:, None] * speed * np.array([ux, uy])
    return np.mod(start[None] + steps, 1.0), speed


def draw_path(combo: Combo, rng: np.random.Generator, num_frames: int,
              motion: str = "traverse") -> tuple[np.ndarray, float, dict]:
    """((T, 2) float32 centres, radius, extra meta) of one random clip of `combo`; images
    (direction None) are the same for either motion. The radius is drawn first, as it always was,
    so traversal data stays what it was before --motion existed."""
    radius = float(rng.uniform(*RADIUS_RANGE))
    if motion == "stationary" and combo[2] is not None:
        positions, speed = stationary_trajectory(rng, combo[2], num_frames, radius)
        return positions.astype(np.float32), radius, {"motion": motion, "speed": speed}
    return trajectory(rng, combo[2], num_frames, radius).astype(np.float32), radius, {}


def render_clip(combo: Combo, rng: np.random.Generator, num_frames: int, sizes,
                motion: str = "traverse") -> tuple[dict, np.ndarray, float]:
    """({size: (T, size, size, 3) uint8}, (T, 2) centres, radius) of one random clip of `combo`."""
    positions, radius, extra = draw_path(combo, rng, num_frames, motion)
    return render_sizes(combo, positions, radius, sizes, bool(extra)), positions, radius


def render_sizes(combo: Combo, positions: np.ndarray, radius: float, sizes, wrap: bool) -> dict:
    """{size: (T, size, size, 3) uint8} of one path at every size."""
    return {size: render(combo, positions, radius, size, wrap=wrap) for size in sizes}


def make_example(index: int, settings: dict[str, Any]) -> ClipRecord:
    """Example `index` of the split: the same for every shard and worker count."""
    split_id, kind_id = SPLITS.index(settings["split"]), KINDS.index(settings["kind"])
    rng = np.random.default_rng([settings["seed"], split_id, kind_id, index])
    options = combos(settings["kind"], settings["split"], settings["heldout"])
    combo = options[rng.integers(len(options))]
    num_frames = settings["num_frames"] if settings["kind"] == "video" else 1
    positions, radius, extra = draw_path(combo, rng, num_frames, settings.get("motion", "traverse"))
    stacks = render_sizes(combo, positions, radius, settings["sizes"], wrap=bool(extra))
    base = min(stacks)
    return ClipRecord(
        id=f"shapes-{settings['kind']}-{settings['split']}-{index:07d}",
        caption=caption(*combo),
        frames=stacks[base],
        fps=float(settings["fps"]),
        hires={size: stack for size, stack in stacks.items() if size != base},
        annotations={"positions": positions},
        meta=dict(color=combo[0], shape=combo[1], direction=combo[2], radius=radius, split=settings["split"], **extra),
    )


def shard_fn(index_range: tuple[int, int], settings: dict[str, Any], sink: runner.ShardSink) -> None:
    for index in range(*index_range):
        with sink.item(f"example {index}"):
            sink.write(make_example(index, settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m data_pipelines.{JOB}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--num_examples", type=int, default=1024, help="records to write (default: %(default)s)")
    parser.add_argument("--kind", choices=KINDS, default="video", help="clips or 1-frame images (default: %(default)s)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="train: no held-out combo; heldout: only them")
    parser.add_argument("--heldout", default="", help="comma-separated color:shape:direction, '*' matches any")
    parser.add_argument("--num_frames", type=int, default=80, help="frames per clip (default: %(default)s)")
    parser.add_argument("--sizes", default="128", help="square sizes, e.g. 32,128; smallest is the base (%(default)s)")
    parser.add_argument("--fps", type=float, default=16.0, help="frame rate stored in the records (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s)")
    parser.add_argument("--motion", choices=MOTIONS, default="traverse",
                        help="traverse: one path across the frame per clip; stationary: constant speed, wrapping "
                             "around the borders, for clips of any length (default: %(default)s)")
    runner.add_common_flags(parser, prefix="shapes")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runner.check_common_flags(parser, args)
    if args.num_examples < 1 or args.num_frames < 1 or args.fps <= 0:
        parser.error("--num_examples, --num_frames and --fps must be positive")
    try:
        heldout = parse_heldout(args.heldout)
    except ValueError as e:
        parser.error(str(e))
    if not combos(args.kind, args.split, heldout):
        parser.error(f"the {args.split} split of {args.kind}s has no combination left with --heldout {args.heldout!r}")
    settings = {
        "num_frames": args.num_frames,
        "sizes": runner.parse_sizes(parser, args.sizes),
        "fps": args.fps,
        "seed": args.seed,
        "motion": args.motion,
        "kind": args.kind,
        "split": args.split,
        "heldout": heldout,
        "codec": args.codec,
        "quality": args.quality,
    }
    edges = [k * args.num_examples // args.num_shards for k in range(args.num_shards + 1)]
    bounds = list(zip(edges[:-1], edges[1:]))
    tasks = runner.make_tasks(args.output_dir, args.prefix, bounds, [b - a for a, b in bounds])

    def run() -> dict:
        return runner.run_job(
            JOB, tasks, shard_fn, settings, args.output_dir, args.prefix, args.workers, args.overwrite
        )

    return runner.cli(run)


if __name__ == "__main__":
    sys.exit(main())
