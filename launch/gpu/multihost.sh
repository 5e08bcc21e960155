#!/usr/bin/env bash
# Several GPU hosts without a scheduler: run this on every host, each with its own --process-id.
#
# Usage: launch/gpu/multihost.sh --coordinator HOST:PORT --num-processes N --process-id I [flags] [-- job flags]
#
# It starts python -m lumiere_jax.main with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
# JAX_PROCESS_ID set, which lumiere_jax.parallel.distributed hands to jax.distributed.initialize:
# process 0 serves as coordinator at HOST:PORT (HOST is process 0's address, reachable from every
# host); each process drives all GPUs of its host. Flags after -- go to the job verbatim.
#
# Flags (or the environment variable in brackets):
#   --coordinator HOST:PORT  process 0's address [JAX_COORDINATOR_ADDRESS]
#   --num-processes N        hosts in the job [JAX_NUM_PROCESSES]
#   --process-id I           this host's rank, 0 .. N-1 [JAX_PROCESS_ID]
#   --python PYTHON          interpreter (default python3) [LUMIERE_PYTHON]
#   --config FILE            e.g. configs/stunet_paper.py [LUMIERE_CONFIG]
#   --workdir DIR            the job's output directory, shared by all hosts [LUMIERE_WORKDIR]
#   --mode MODE              train (default), sample, export, ... [LUMIERE_MODE]
#   --env KEY=VALUE          set for the job (repeatable)
#   --dry-run                print the command instead of running it [LUMIERE_DRY_RUN=1]
#
# Example (two hosts; the second runs the same with --process-id 1):
#   launch/gpu/multihost.sh --coordinator 10.0.0.1:12355 --num-processes 2 --process-id 0 \
#       --config configs/stunet_paper.py --workdir /shared/runs/paper -- --config.mesh.shape.fsdp=16

# shellcheck source=SCRIPTDIR/../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

declare -A FLAG_VARS=(
  [--coordinator]=COORDINATOR [--num-processes]=NUM_PROCESSES [--process-id]=PROCESS_ID [--python]=PYTHON
  [--config]=CONFIG [--workdir]=WORKDIR [--mode]=MODE [--env]='ENV_ITEMS[]'
)
declare -A BOOL_FLAGS=()

COORDINATOR="${JAX_COORDINATOR_ADDRESS:-}"
NUM_PROCESSES="${JAX_NUM_PROCESSES:-}"
PROCESS_ID="${JAX_PROCESS_ID:-}"
PYTHON="${LUMIERE_PYTHON:-python3}"
CONFIG="${LUMIERE_CONFIG:-}"
WORKDIR="${LUMIERE_WORKDIR:-}"
MODE="${LUMIERE_MODE:-train}"

parse_flags "$@"
require "$COORDINATOR" --coordinator JAX_COORDINATOR_ADDRESS
require "$NUM_PROCESSES" --num-processes JAX_NUM_PROCESSES
require "$PROCESS_ID" --process-id JAX_PROCESS_ID
[[ "$COORDINATOR" =~ ^[^:[:space:]]+:[0-9]+$ ]] || die "--coordinator $COORDINATOR must be HOST:PORT"
[[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]] || die "--num-processes $NUM_PROCESSES must be a positive integer"
if ! [[ "$PROCESS_ID" =~ ^[0-9]+$ ]] || ((PROCESS_ID >= NUM_PROCESSES)); then
  die "--process-id $PROCESS_ID must be an integer in 0 .. $((NUM_PROCESSES - 1))"
fi
set_main_command "$PYTHON" "$CONFIG" "$WORKDIR" "$MODE"
run env "JAX_COORDINATOR_ADDRESS=$COORDINATOR" "JAX_NUM_PROCESSES=$NUM_PROCESSES" "JAX_PROCESS_ID=$PROCESS_ID" \
  "${MAIN_CMD[@]}"
