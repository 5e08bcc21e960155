#!/usr/bin/env bash
# Reproduces demo/checkpoint/ (the weights ./demo.sh samples): synthetic training data, the caption
# vocabulary and embeddings, 2,800 training steps of configs/demo.py (about 50 minutes on 2 CPU
# cores), the export, and demo/checkpoint/provenance.json with the scores of the STUNet and of the
# same weights with the temporal modules bypassed. Every step resumes or skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure_env.sh ""
py=.venv/bin/python
export JAX_PLATFORMS=cpu
# Two CPU devices run the data-parallel step ~1.5x faster than one on a 2-core machine.
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=2}"
data=workdir/demo/data/train  # configs/demo.py's data.sources
heldout=$($py -c "import sys; sys.path.insert(0, 'configs'); from demo import HELDOUT; print(HELDOUT)")

$py -m data_pipelines.synthetic --output_dir "$data" --num_examples 4096 --num_frames 16 --sizes 32 \
  --num_shards 4 --workers 2 --heldout "$heldout" >/dev/null
$py -m data_pipelines.train_vocabulary --input "$data/*.jsonl" --output demo/checkpoint/vocab.model --vocab_size 64
$py -m data_pipelines.encode_captions --input "$data/*.jsonl" --encoder tiny --checkpoint_format seed --init_seed 0 \
  --vocabulary demo/checkpoint/vocab.model --max_length 8 --dtype float32 --batch_size 64 >/dev/null
train=(-m lumiere_jax.main --config=configs/demo.py --workdir=workdir/demo/run --mode=train)
$py "${train[@]}"
$py -m lumiere_jax.main --config=configs/demo.py --workdir=workdir/demo/run --mode=export
rm -rf demo/checkpoint/params  # a stale file from an earlier export must not survive
cp -r workdir/demo/run/export/. demo/checkpoint/
$py scripts/evaluate_demo_checkpoint.py --config=configs/demo.py \
  --train_command="JAX_PLATFORMS=cpu XLA_FLAGS=$XLA_FLAGS python ${train[*]}"
