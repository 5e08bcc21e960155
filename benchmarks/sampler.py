"""Seconds per denoising step of the base STUNet and the SSR stage, and the SSR window overhead.

    python benchmarks/sampler.py [--base=configs/stunet_tiny.py] [--ssr=configs/ssr_tiny.py] [--batch=1]
        [--num_frames=0] [--steps=4]
    python benchmarks/sampler.py --base=configs/demo_long.py --frames=16,32,64,128 [--steps=2]

Models are freshly initialised (timing does not depend on the weights). The window overhead is
frames processed by the windowed model per frame of the clip: sum of window lengths / clip length.

--frames times the base model alone at each clip length (MultiDiffusion windows of its training
length, sample.window_overlap and sample.window_aggregation, overridable as --base.sample.X=...): the
windows, and so the cost of a step, grow linearly with the frames; seconds per step per frame shows it.
"""
import json
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from lumiere_jax.diffusion.multidiffusion import window_count, window_starts
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import UNet, UNetConfig
from lumiere_jax.parallel import create_sharded, logical_axis_rules, mesh_from_config
from lumiere_jax.sample.generate import generate

config_flags.DEFINE_config_file("base", "configs/stunet_tiny.py", "Base STUNet config.")
config_flags.DEFINE_config_file("ssr", "configs/ssr_tiny.py", "SSR config.")
flags.DEFINE_integer("batch", 1, "Prompts per call.")
flags.DEFINE_integer("num_frames", 0, "Clip length (0: the base model's training length).")
flags.DEFINE_integer("steps", 4, "Denoising steps timed per stage.")
flags.DEFINE_list("frames", [], "Clip lengths to time the base model at, e.g. 16,32,64,128 (instead of both stages).")
FLAGS = flags.FLAGS


def time_stage(config, frames, size, window, overlap, batch, steps, ssr: bool, aggregation: str = "average") -> float:
    mesh = mesh_from_config(config.mesh)
    model = create_sharded(lambda key: UNet(UNetConfig.from_config(config.model), rngs=Rngs(key)), 0, mesh,
                           logical_axis_rules(config.mesh.rules))
    graphdef, state = nnx.split(model)
    cond = {"text": jnp.zeros((batch, config.text.max_length, config.model.text_dim)),
            "mask": jnp.ones((batch, config.text.max_length), bool)}
    if ssr:
        cond.update(lowres=jnp.zeros((batch, frames, size, size, 3)), aug=jnp.zeros((batch,)))

    @jax.jit
    def run(state, noise, rng):
        return generate(nnx.merge(graphdef, state), cond, noise, rng, config, num_steps=steps, window=window,
                        overlap=overlap, aggregation=aggregation)

    noise = jnp.zeros((batch, frames, size, size, 3))
    jax.block_until_ready(run(state, noise, jax.random.key(0)))  # compile
    start = time.perf_counter()
    jax.block_until_ready(run(state, noise, jax.random.key(1)))
    return (time.perf_counter() - start) / steps


def frame_scaling(base, lengths: list[int]) -> dict:
    """The base model's seconds per step at each clip length, and per frame (flat when linear)."""
    window, overlap = base.data.num_frames, base.sample.window_overlap
    aggregation = base.sample.window_aggregation
    rows = []
    for frames in lengths:
        seconds = time_stage(base, frames, base.data.resolution, window, overlap, FLAGS.batch, FLAGS.steps, False,
                             aggregation)
        rows.append({"frames": frames, "windows": window_count(frames, window, overlap, aggregation),
                     "seconds_per_step": round(seconds, 4), "seconds_per_step_per_frame": round(seconds / frames, 5)})
    return {"device": jax.devices()[0].device_kind, "batch": FLAGS.batch, "window": window, "overlap": overlap,
            "aggregation": aggregation, "steps_timed": FLAGS.steps, "clips": rows}


def main(argv):
    del argv
    base, ssr = FLAGS.base, FLAGS.ssr
    if FLAGS.frames:
        print(json.dumps(frame_scaling(base, [int(f) for f in FLAGS.frames]), indent=2))
        return
    frames = FLAGS.num_frames or base.data.num_frames
    report = {"device": jax.devices()[0].device_kind, "batch": FLAGS.batch, "frames": frames}
    report["base_seconds_per_step"] = round(time_stage(base, frames, base.data.resolution, base.data.num_frames,
                                                       base.sample.window_overlap, FLAGS.batch, FLAGS.steps, False), 4)
    starts = window_starts(frames, ssr.ssr.window, ssr.ssr.overlap)
    report["ssr_windows"] = len(starts)
    report["ssr_window_overhead"] = round(len(starts) * ssr.ssr.window / frames, 3)
    report["ssr_seconds_per_step"] = round(time_stage(ssr, frames, ssr.data.hires_resolution, ssr.ssr.window,
                                                      ssr.ssr.overlap, FLAGS.batch, FLAGS.steps, True), 4)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
