#!/usr/bin/env bash
# The main job on a fresh machine: installs what it needs, then reports the paper-shaped STUNet
# (parameters, per-level frames and resolution, FLOPs of one forward pass) without allocating it.
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure_env.sh ""
workdir="${1:-workdir/model_report}"
exec .venv/bin/python -m lumiere_jax.main --config=configs/stunet_paper.py --workdir="$workdir" --mode=model_report
