"""Writes the demo's style: stills of the moving-shapes domain on a grey background, which no training
clip has, as a folder of PNG images with caption sidecars (the input data_pipelines.prepare_images reads).

    python scripts/make_style_images.py --output_dir workdir/demo_style/images --num_images 256

Each image is one shape of one colour at a random place, rendered by data_pipelines.synthetic's own
renderer on STYLE_BACKGROUND and captioned "a {color} {shape}" as the domain's stills are. The
held-out combinations' colour-shape pairs are excluded, so the style never shows them.
"""
import argparse
import pathlib
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs.demo_style import STYLE_BACKGROUND  # noqa: E402
from data_pipelines.synthetic import RADIUS_RANGE, caption, combos, parse_heldout, render, trajectory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_images", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--heldout", default="", help="data_pipelines.synthetic --heldout patterns to leave out")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    heldout = {(c, s) for c, s, _ in parse_heldout(args.heldout)}
    options = [c for c in combos("image", "train", []) if c[:2] not in heldout]
    rng = np.random.default_rng(args.seed)
    for i in range(args.num_images):
        combo = options[rng.integers(len(options))]
        radius = float(rng.uniform(*RADIUS_RANGE))
        frame = render(combo, trajectory(rng, None, 1, radius), radius, args.size, STYLE_BACKGROUND)[0]
        Image.fromarray(frame).save(out / f"{i:04d}.png")
        (out / f"{i:04d}.txt").write_text(caption(*combo))
    print(f"wrote {args.num_images} images with captions to {out}")


if __name__ == "__main__":
    main()
