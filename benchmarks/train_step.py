"""Times the STUNet train step: compile time, median step time, clips/s, TFLOP/s per device, memory.

    python benchmarks/train_step.py --config=configs/stunet_tiny.py [--steps=10] [--config.data.batch_size=8]

Batches are random tensors of the config's shape (the input pipeline is benchmarked separately in
benchmarks/input_pipeline.py). FLOPs are XLA's cost analysis of the compiled step per device
(recompute not excluded); MFU uses the per-chip bf16 peak of lumiere_jax.train.metrics.
"""
import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from lumiere_jax.parallel import batch_sharding, logical_axis_rules, mesh_from_config, state_shardings
from lumiere_jax.train.metrics import peak_tflops
from lumiere_jax.train.optimizer import learning_rate_schedule
from lumiere_jax.train.step import make_train_step
from lumiere_jax.train.trainer import build_train_state, compile_step

config_flags.DEFINE_config_file("config", "configs/stunet_tiny.py", "Model/training config.")
flags.DEFINE_integer("steps", 10, "Timed steps (after one warm-up step).")
FLAGS = flags.FLAGS


def random_batch(config, mesh, rules):
    b, t, r = config.data.batch_size, config.data.num_frames, config.data.resolution
    k = jax.random.split(jax.random.key(0), 2)
    arrays = {
        "video": jax.random.uniform(k[0], (b, t, r, r, config.model.in_channels + config.model.conditioning_channels),
                                    minval=-1, maxval=1),
        "text_embeddings": jax.random.normal(k[1], (b, config.text.max_length, config.model.text_dim), jnp.bfloat16),
        "text_mask": jnp.ones((b, config.text.max_length), bool),
    }
    return {key: jax.device_put(v, batch_sharding(mesh, rules, v.ndim)) for key, v in arrays.items()}


def main(argv):
    del argv
    config = FLAGS.config
    mesh = mesh_from_config(config.mesh)
    rules = logical_axis_rules(config.mesh.rules)
    ts = build_train_state(config, mesh, rules)
    graphdef, state = nnx.split(ts)
    shardings = state_shardings(state, mesh, rules)
    batch = random_batch(config, mesh, rules)
    step = make_train_step(graphdef, config, learning_rate_schedule(config.train))
    compiled, info = compile_step(step, state, shardings, batch, mesh, rules)
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(FLAGS.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    device = jax.devices()[0]
    peak = peak_tflops(device.device_kind, config.train.peak_tflops)
    tflops = info["flops_per_device"] / median / 1e12
    stats = device.memory_stats() or {}
    report = {
        "device": device.device_kind, "devices": jax.device_count(), "mesh": dict(mesh.shape),
        "batch": config.data.batch_size, "frames": config.data.num_frames, "resolution": config.data.resolution,
        "compile_seconds": info["compile_seconds"], "median_step_seconds": round(median, 4),
        "clips_per_second": round(config.data.batch_size / median, 3),
        "tflops_per_device": round(tflops, 3), "mfu": round(tflops / peak, 4) if peak else None,
        "compiled_memory_gib": {k: v for k, v in info.items() if k.endswith("_gib")},
        "peak_bytes_in_use_gib": round(stats["peak_bytes_in_use"] / 2**30, 3) if "peak_bytes_in_use" in stats else None,
        "loss": float(metrics["loss"]),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
