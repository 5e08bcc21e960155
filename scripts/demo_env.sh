# Sourced by the scripts that build the committed demo checkpoints: the project's environment, CPU
# settings, and the demo's training data (configs/demo.py's data.sources), written if missing.
# shellcheck shell=bash
scripts/ensure_env.sh ""
py=.venv/bin/python
export JAX_PLATFORMS=cpu
# Two CPU devices run the data-parallel step ~1.5x faster than one on a 2-core machine.
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=2}"
heldout=$($py -c "import sys; sys.path.insert(0, 'configs'); from demo import HELDOUT; print(HELDOUT)")

demo_training_data() {  # 4,096 synthetic clips (held-out combinations excluded) and their caption embeddings
  local data=workdir/demo/data/train
  $py -m data_pipelines.synthetic --output_dir "$data" --num_examples 4096 --num_frames 16 --sizes 32 \
    --num_shards 4 --workers 2 --heldout "$heldout" >/dev/null
  if [ ! -f demo/checkpoint/vocab.model ]; then
    $py -m data_pipelines.train_vocabulary --input "$data/*.jsonl" --output demo/checkpoint/vocab.model --vocab_size 64
  fi
  encode_demo_captions "$data/*.jsonl"
}

encode_demo_captions() {  # the demo's frozen seeded tiny T5 over the captions of the given JSONL glob
  $py -m data_pipelines.encode_captions --input "$1" --encoder tiny --checkpoint_format seed --init_seed 0 \
    --vocabulary demo/checkpoint/vocab.model --max_length 8 --dtype float32 --batch_size 64 >/dev/null
}

train_and_export() {  # $1 config, $2 run directory, $3 checkpoint directory
  # Trains (resuming the run directory), exports, copies the export over the checkpoint directory (a
  # stale params/ from an earlier export must not survive) and sets train_command, the training command
  # line the evaluation scripts record in the checkpoint's provenance.
  local config=$1 run=$2 out=$3
  local train=(-m lumiere_jax.main --config="$config" --workdir="$run" --mode=train)
  $py "${train[@]}"
  $py -m lumiere_jax.main --config="$config" --workdir="$run" --mode=export
  rm -rf "$out/params"
  mkdir -p "$out"
  cp -r "$run/export/." "$out/"
  # shellcheck disable=SC2034  # read by the build scripts that source this file
  train_command="JAX_PLATFORMS=cpu XLA_FLAGS=$XLA_FLAGS python ${train[*]}"
}
