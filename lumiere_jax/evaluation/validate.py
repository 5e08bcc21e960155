"""How far the synthetic evaluator can be trusted: its scores on real clips of the domain, clean
and degraded the ways a generator's output differs from the data (noise, blur, soft edges).

    python -m lumiere_jax.evaluation.validate --sizes 16,32,64,128 --clips 60

Real clips are rendered by data_pipelines.synthetic itself (train split, every combination), so
their prompts are the truth; a score below 100% here is the evaluator's own error. Measured with
60 clips of 16 frames per cell (30 at 128x128): colour, direction 100% and presence >= 99.6% in
every cell; shape 100% on clean, noisy and blurred clips at 32, 64 and 128 (96.7-98.3% at 16x16),
93.3% (32), 98.3% (64) and 96.7% (128) on "soft" clips.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from data_pipelines.synthetic import make_example
from lumiere_jax.evaluation.synthetic import evaluate_clips

# Degradations, with blurs in frame widths (0.02 is 0.64 px at 32x32) and levels in [0, 1]:
# "soft" imitates a generator: anti-aliased edges, blur, a dimmer object, a grey noisy background.
CONDITIONS = {
    "clean": {},
    "noise": {"noise": 0.1},
    "blur": {"blur": 0.02},
    "noise+blur": {"noise": 0.1, "blur": 0.02},
    "soft": {"antialias": True, "blur": 0.03, "gain": 0.8, "background": 0.06, "noise": 0.06},
}


def real_clips(num: int, size: int, num_frames: int = 16, seed: int = 0,
               antialias: bool = False) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(N, T, size, size, 3) float [0, 1] clips of the data, their captions and (N, T, 2) true
    centres. antialias: rendered at 4x and box-filtered down, i.e. edge pixels partly covered."""
    factor = 4 if antialias else 1
    settings = {"seed": seed, "split": "train", "kind": "video", "heldout": [], "num_frames": num_frames,
                "sizes": [size * factor], "fps": 16.0}
    records = [make_example(i, settings) for i in range(num)]
    frames = np.stack([r.frames for r in records]).astype(np.float32) / 255.0
    clips = frames.reshape(num, num_frames, size, factor, size, factor, 3).mean((3, 5))
    return clips, [r.caption for r in records], np.stack([r.annotations["positions"] for r in records])


def degrade(clips: np.ndarray, rng: np.random.Generator, noise: float = 0.0, blur: float = 0.0, gain: float = 1.0,
            background: float = 0.0) -> np.ndarray:
    """[0, 1] clips -> gain * (clips blurred by `blur` frame widths) + background + N(0, noise), clipped."""
    sigma = blur * clips.shape[2]
    out = ndimage.gaussian_filter(clips, (0, 0, sigma, sigma, 0)) if sigma else clips
    out = gain * out + background + (rng.normal(0.0, noise, clips.shape) if noise else 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def condition_clips(condition: str, num: int, size: int, num_frames: int = 16,
                    seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Real clips under one of CONDITIONS, in the model's [-1, 1] range, with their captions."""
    options = dict(CONDITIONS[condition])
    clips, prompts, _ = real_clips(num, size, num_frames, seed, antialias=options.pop("antialias", False))
    return 2.0 * degrade(clips, np.random.default_rng(seed), **options) - 1.0, prompts


def validate(sizes: Sequence[int], conditions: Sequence[str], num: int, num_frames: int = 16,
             seed: int = 0) -> dict:
    """{size: {condition: overall scores}} of the evaluator on real clips."""
    table = {}
    for size in sizes:
        for condition in conditions:
            clips, prompts = condition_clips(condition, num, size, num_frames, seed)
            report = evaluate_clips(clips, prompts)
            table.setdefault(str(size), {})[condition] = report["overall"]
            scores = report["overall"]
            print(f"{size:>4}px {condition:<11} colour {scores['color_accuracy']:6.1%}  shape "
                  f"{scores['shape_accuracy']:6.1%}  direction {scores['direction_accuracy']:6.1%}  presence "
                  f"{scores['presence_rate']:6.1%}  jitter {scores['trajectory_jitter']:.4f}  "
                  f"shape fit {scores['shape_fit']:.3f}", file=sys.stderr)
    return table


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lumiere_jax.evaluation.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="32,64", help="frame sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help=f"comma-separated, from {', '.join(CONDITIONS)} (default: all)")
    parser.add_argument("--clips", type=int, default=60, help="clips per size and condition (%(default)s)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data and noise seed (%(default)s)")
    parser.add_argument("--output", default="", help="also write the table to this JSON file")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r} must be comma-separated integers")
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        parser.error(f"unknown --conditions {unknown}; choose from {', '.join(CONDITIONS)}")
    if not sizes or min(sizes) < 8 or args.clips < 1 or args.frames < 2:
        parser.error("--sizes must be >= 8, --clips >= 1 and --frames >= 2")
    table = validate(sizes, conditions, args.clips, args.frames, args.seed)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(table, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
