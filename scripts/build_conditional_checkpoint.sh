#!/usr/bin/env bash
# Reproduces demo/conditional_checkpoint/ (the conditional tasks ./demo.sh shows): demo/checkpoint
# fine-tuned with configs/demo_conditional.py on the demo's synthetic data with a random known-pixel
# mask per clip (about 25 minutes on 2 CPU cores), the export, and its provenance.json with the
# scores of every task against the training-free replacement baseline. Every step resumes or skips
# what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure_env.sh ""
py=.venv/bin/python
export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=2}"
data=workdir/demo/data/train  # configs/demo.py's data.sources, written as build_demo_checkpoint.sh does
heldout=$($py -c "import sys; sys.path.insert(0, 'configs'); from demo import HELDOUT; print(HELDOUT)")

$py -m data_pipelines.synthetic --output_dir "$data" --num_examples 4096 --num_frames 16 --sizes 32 \
  --num_shards 4 --workers 2 --heldout "$heldout" >/dev/null
$py -m data_pipelines.encode_captions --input "$data/*.jsonl" --encoder tiny --checkpoint_format seed --init_seed 0 \
  --vocabulary demo/checkpoint/vocab.model --max_length 8 --dtype float32 --batch_size 64 >/dev/null
run=workdir/demo_conditional/run
train=(-m lumiere_jax.main --config=configs/demo_conditional.py --workdir=$run --mode=train)
$py "${train[@]}"
$py -m lumiere_jax.main --config=configs/demo_conditional.py --workdir=$run --mode=export
rm -rf demo/conditional_checkpoint
mkdir -p demo/conditional_checkpoint
cp -r $run/export/. demo/conditional_checkpoint/
$py scripts/evaluate_conditional_checkpoint.py --config=configs/demo_conditional.py --run_dir=$run \
  --train_command="JAX_PLATFORMS=cpu XLA_FLAGS=$XLA_FLAGS python ${train[*]}"
