#!/usr/bin/env bash
# Reproduces demo/conditional_checkpoint/ (the conditional tasks ./demo.sh shows): demo/checkpoint
# fine-tuned with configs/demo_conditional.py on the demo's synthetic data with a random known-pixel
# mask per clip (about 25 minutes on 2 CPU cores), the export, and its provenance.json with the
# scores of every task against the training-free replacement baseline. Every step resumes or skips
# what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/demo_env.sh
source scripts/demo_env.sh
demo_training_data  # configs/demo.py's data.sources, as build_demo_checkpoint.sh writes them
run=workdir/demo_conditional/run
train_and_export configs/demo_conditional.py "$run" demo/conditional_checkpoint
$py scripts/evaluate_conditional_checkpoint.py --config=configs/demo_conditional.py --run_dir="$run" \
  --train_command="$train_command"
