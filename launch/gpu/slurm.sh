#!/usr/bin/env bash
# Several GPU hosts under SLURM: run inside an allocation; srun starts one process per node.
#
# Usage: launch/gpu/slurm.sh [flags] [-- job flags]
#   salloc --nodes=4 --gpus-per-node=8 --exclusive launch/gpu/slurm.sh --config ... --workdir ...
#   sbatch --nodes=4 --gpus-per-node=8 --exclusive --wrap "launch/gpu/slurm.sh --config ... --workdir ..."
#
# The coordinator is the allocation's first host (`scontrol show hostnames "$SLURM_JOB_NODELIST"`,
# run even with --dry-run since it only reads the allocation) at --port; every task gets
# JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES (the node count) and JAX_PROCESS_ID (its
# SLURM_PROCID), which lumiere_jax.parallel.distributed hands to jax.distributed.initialize.
# Each process drives all GPUs of its node. Flags after -- go to the job verbatim.
#
# Flags (or the LUMIERE_* environment variable in brackets):
#   --port PORT        coordinator port on the first host (default 12355) [LUMIERE_PORT]
#   --python PYTHON    interpreter on the nodes (default python3) [LUMIERE_PYTHON]
#   --config FILE      e.g. configs/stunet_paper.py [LUMIERE_CONFIG]
#   --workdir DIR      the job's output directory, shared by all nodes [LUMIERE_WORKDIR]
#   --mode MODE        train (default), sample, export, ... [LUMIERE_MODE]
#   --env KEY=VALUE    set for the job (repeatable)
#   --srun-arg ARG     an extra srun argument (repeatable), e.g. --srun-arg=--container-image=IMG
#   --dry-run          print the srun command instead of running it [LUMIERE_DRY_RUN=1]

# shellcheck source=SCRIPTDIR/../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

declare -A FLAG_VARS=(
  [--port]=PORT [--python]=PYTHON [--config]=CONFIG [--workdir]=WORKDIR [--mode]=MODE [--env]='ENV_ITEMS[]'
  [--srun-arg]='SRUN_ARGS[]'
)
declare -A BOOL_FLAGS=()

PORT="${LUMIERE_PORT:-12355}"
PYTHON="${LUMIERE_PYTHON:-python3}"
CONFIG="${LUMIERE_CONFIG:-}"
WORKDIR="${LUMIERE_WORKDIR:-}"
MODE="${LUMIERE_MODE:-train}"
SRUN_ARGS=()

parse_flags "$@"
[[ -n "${SLURM_JOB_NODELIST:-}" ]] ||
  die "SLURM_JOB_NODELIST is not set: run inside an allocation (salloc or sbatch --wrap)"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port $PORT must be a port number"
set_main_command "$PYTHON" "$CONFIG" "$WORKDIR" "$MODE"
mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
((${#HOSTS[@]} > 0)) || die "scontrol show hostnames '$SLURM_JOB_NODELIST' listed no host"
# The rank is known only inside each task: bash -c reads SLURM_PROCID there, then execs the job's argv.
# shellcheck disable=SC2016  # $SLURM_PROCID and $@ expand in the task's shell, not here
run srun "--nodes=${#HOSTS[@]}" --ntasks-per-node=1 "${SRUN_ARGS[@]}" \
  env "JAX_COORDINATOR_ADDRESS=${HOSTS[0]}:$PORT" "JAX_NUM_PROCESSES=${#HOSTS[@]}" \
  bash -c 'export JAX_PROCESS_ID="$SLURM_PROCID" && exec "$@"' lumiere-task "${MAIN_CMD[@]}"
