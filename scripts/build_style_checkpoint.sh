#!/usr/bin/env bash
# Reproduces demo/style_checkpoint/ (the style ./demo.sh applies): 256 grey-background stills written
# as a captioned image folder, turned into image shards by data_pipelines.prepare_images, their
# captions encoded, a spatial-only fine-tune of demo/checkpoint in image mode (configs/demo_style.py,
# a few minutes on 2 CPU cores), the spatial-only export, and its provenance.json with the edit and
# style scores (scripts/evaluate_edit_and_style.py). Every step resumes or skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/demo_env.sh
source scripts/demo_env.sh
root=workdir/demo_style
$py scripts/make_style_images.py --output_dir $root/images --num_images 256 --heldout "$heldout"
$py -m data_pipelines.prepare_images --image_dir $root/images --output_dir $root/data --sizes 32 --num_shards 2 \
  --workers 1 >/dev/null
encode_demo_captions "$root/data/*.jsonl"
train_and_export configs/demo_style.py "$root/run" demo/style_checkpoint
$py scripts/evaluate_edit_and_style.py --run_dir="$root/run" --train_command="$train_command"
