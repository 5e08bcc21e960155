#!/usr/bin/env bash
# Reproduces demo/checkpoint/ (the weights ./demo.sh samples): synthetic training data, the caption
# vocabulary and embeddings, 2,800 training steps of configs/demo.py (about 50 minutes on 2 CPU
# cores), the export, and demo/checkpoint/provenance.json with the scores of the STUNet and of the
# same weights with the temporal modules bypassed. Every step resumes or skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/demo_env.sh
source scripts/demo_env.sh
demo_training_data
train=(-m lumiere_jax.main --config=configs/demo.py --workdir=workdir/demo/run --mode=train)
$py "${train[@]}"
$py -m lumiere_jax.main --config=configs/demo.py --workdir=workdir/demo/run --mode=export
rm -rf demo/checkpoint/params  # a stale file from an earlier export must not survive
cp -r workdir/demo/run/export/. demo/checkpoint/
$py scripts/evaluate_demo_checkpoint.py --config=configs/demo.py \
  --train_command="JAX_PLATFORMS=cpu XLA_FLAGS=$XLA_FLAGS python ${train[*]}"
