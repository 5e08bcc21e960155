#!/usr/bin/env bash
# Builds demo/long_checkpoint/ (issue 21: clips longer than the training window): stationary-motion
# synthetic training data (shapes that keep moving and wrap around the borders, so every window of a
# long clip is a training clip), their caption embeddings (the demo's vocabulary and seeded tiny T5),
# configs/demo_long.py trained from scratch (frame positions counted from the long clip; 2,800 steps
# like the demo, about 50 minutes on 2 CPU cores), the export, and demo/long_checkpoint/provenance.json
# with the scores of 64-frame held-out clips for every window aggregation (and independent windows,
# the baseline). Independent of demo/checkpoint's weights. Every step resumes or skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/demo_env.sh
source scripts/demo_env.sh
data=workdir/demo_long/data/train
mkdir -p demo/long_checkpoint
[ -f demo/long_checkpoint/vocab.model ] || cp demo/checkpoint/vocab.model demo/long_checkpoint/vocab.model
$py -m data_pipelines.synthetic --output_dir "$data" --num_examples 4096 --num_frames 16 --sizes 32 \
  --num_shards 4 --workers 2 --heldout "$heldout" --motion stationary >/dev/null
encode_demo_captions "$data/*.jsonl"
train_and_export configs/demo_long.py workdir/demo_long/run demo/long_checkpoint
$py scripts/evaluate_long_checkpoint.py --config=configs/demo_long.py --train_command="$train_command"
