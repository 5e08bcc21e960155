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
train_and_export configs/demo.py workdir/demo/run demo/checkpoint
$py scripts/evaluate_demo_checkpoint.py --config=configs/demo.py --train_command="$train_command"
