#!/usr/bin/env bash
# The main job on a fresh machine (2 CPU cores, under 6 minutes with the install): installs what it
# needs, then `--mode=demo` of configs/demo.py: the committed demo checkpoint samples prompts held out
# of its training into MP4/GIF/PNG and an evaluation report, and the same model trains from scratch
# for a few steps with its loss falling. Extra arguments are passed on (--config.demo.train_steps=30).
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure_env.sh ""
workdir="${DEMO_WORKDIR:-workdir/demo_run}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
# One CPU device per core (a power of two up to 8, so the batch of 16 splits evenly): the
# data-parallel step uses the cores better than one device's thread pool does.
devices=1
while [ $((devices * 2)) -le "$(nproc)" ] && [ "$devices" -lt 8 ]; do devices=$((devices * 2)); done
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=$devices}"
# A persistent compilation cache: the conditional tasks share one compiled sampler, and a second run
# of the demo skips most compiles.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-workdir/.jax_cache}"
exec .venv/bin/python -m lumiere_jax.main --config=configs/demo.py --workdir="$workdir" --mode=demo "$@"
