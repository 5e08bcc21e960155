#!/usr/bin/env bash
# Cloud TPU VMs (single- or multi-host slices) with gcloud: create, set up, run, follow, stop, delete.
#
# Usage: launch/tpu/tpu.sh COMMAND [flags] [-- job flags]
#
#   create   a TPU VM (or, with --queued, a queued resource, then waits until it is ACTIVE)
#   setup    installs jax[tpu] and the project on every worker, from --repo (git) or --wheel
#   run      starts python -m lumiere_jax.main on every worker, in the background (--foreground:
#            attached); flags after -- go to the job verbatim (--config.a.b=value overrides)
#   logs     follows the job's log on --worker (default 0; "all" for every worker)
#   stop     sends SIGTERM to the job on every worker (the trainer checkpoints, then exits)
#   delete   deletes the TPU VM (or the queued resource and its VM)
#
# Flags (or the LUMIERE_* environment variable in brackets):
#   --name NAME               TPU VM / queued resource name [LUMIERE_TPU_NAME]       (all)
#   --zone ZONE               e.g. us-east5-a [LUMIERE_ZONE]                          (all)
#   --project PROJECT         default: gcloud's configured project [LUMIERE_PROJECT]
#   --accelerator-type TYPE   e.g. v5p-32, v6e-16 [LUMIERE_ACCELERATOR_TYPE]          (create)
#   --version VERSION         TPU software version, e.g. v2-alpha-tpuv5 [LUMIERE_RUNTIME_VERSION] (create)
#   --queued                  use a queued resource [LUMIERE_QUEUED=1]
#   --spot                    spot capacity [LUMIERE_SPOT=1]
#   --no-wait                 create --queued: return without waiting for ACTIVE [LUMIERE_NO_WAIT=1]
#   --repo URL, --ref REF     setup from git: clone URL, check out REF (default origin/HEAD) [LUMIERE_REPO, LUMIERE_REF]
#   --wheel FILE              setup from a built wheel (copied with configs/ to every worker) [LUMIERE_WHEEL]
#   --python PYTHON           interpreter on the workers (default python3; a venv's python works) [LUMIERE_PYTHON]
#   --remote-dir DIR          project directory on the workers, relative to home (default lumiere) [LUMIERE_REMOTE_DIR]
#   --config FILE             e.g. configs/stunet_paper.py [LUMIERE_CONFIG]             (run)
#   --workdir DIR             the job's output directory on the workers [LUMIERE_WORKDIR] (run)
#   --mode MODE               train (default), sample, export, ... [LUMIERE_MODE]
#   --job NAME                names the job's log and pid files (default lumiere) [LUMIERE_JOB]
#   --env KEY=VALUE           set for the job (repeatable), e.g. LIBTPU_INIT_ARGS=...
#   --worker N|all            logs: which worker (default 0) [LUMIERE_WORKER]
#   --foreground              run: stay attached to the job's output [LUMIERE_FOREGROUND=1]
#   --dry-run                 print every command instead of running it [LUMIERE_DRY_RUN=1]
#
# Example:
#   launch/tpu/tpu.sh create --name lumiere-v5p --zone us-east5-a --accelerator-type v5p-32 --version v2-alpha-tpuv5
#   launch/tpu/tpu.sh setup  --name lumiere-v5p --zone us-east5-a --repo https://github.com/ORG/lumiere_jax.git
#   launch/tpu/tpu.sh run    --name lumiere-v5p --zone us-east5-a --config configs/stunet_paper.py \
#       --workdir /mnt/runs/paper -- --config.train.num_steps=100000 --config.mesh.shape.fsdp=4

# shellcheck source=SCRIPTDIR/../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

declare -A FLAG_VARS=(
  [--name]=TPU_NAME [--zone]=ZONE [--project]=PROJECT [--accelerator-type]=ACCELERATOR_TYPE
  [--version]=RUNTIME_VERSION [--repo]=REPO [--ref]=REF [--wheel]=WHEEL [--python]=PYTHON
  [--remote-dir]=REMOTE_DIR [--config]=CONFIG [--workdir]=WORKDIR [--mode]=MODE [--job]=JOB
  [--env]='ENV_ITEMS[]' [--worker]=WORKER
)
declare -A BOOL_FLAGS=([--queued]=QUEUED [--spot]=SPOT [--no-wait]=NO_WAIT [--foreground]=FOREGROUND)

TPU_NAME="${LUMIERE_TPU_NAME:-}"
ZONE="${LUMIERE_ZONE:-}"
PROJECT="${LUMIERE_PROJECT:-}"
ACCELERATOR_TYPE="${LUMIERE_ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${LUMIERE_RUNTIME_VERSION:-}"
QUEUED="${LUMIERE_QUEUED:-0}"
SPOT="${LUMIERE_SPOT:-0}"
NO_WAIT="${LUMIERE_NO_WAIT:-0}"
REPO="${LUMIERE_REPO:-}"
REF="${LUMIERE_REF:-origin/HEAD}"
WHEEL="${LUMIERE_WHEEL:-}"
PYTHON="${LUMIERE_PYTHON:-python3}"
REMOTE_DIR="${LUMIERE_REMOTE_DIR:-lumiere}"
CONFIG="${LUMIERE_CONFIG:-}"
WORKDIR="${LUMIERE_WORKDIR:-}"
MODE="${LUMIERE_MODE:-train}"
JOB="${LUMIERE_JOB:-lumiere}"
WORKER="${LUMIERE_WORKER:-0}"
FOREGROUND="${LUMIERE_FOREGROUND:-0}"

check_command "${1:-}"
COMMAND="$1"
shift
parse_flags "$@"
require "$TPU_NAME" --name
require "$ZONE" --zone
LOCATION=(--zone "$ZONE")
[[ -z "$PROJECT" ]] || LOCATION+=(--project "$PROJECT")

# ssh WORKER REMOTE_COMMAND: one shell command line run on the worker(s).
ssh_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION[@]}" "--worker=$1" --command "$2"
}

create() {
  require "$ACCELERATOR_TYPE" --accelerator-type
  require "$RUNTIME_VERSION" --version
  local capacity=()
  [[ "$SPOT" != 1 ]] || capacity=(--spot)
  if [[ "$QUEUED" != 1 ]]; then
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOCATION[@]}" --accelerator-type "$ACCELERATOR_TYPE" \
      --version "$RUNTIME_VERSION" "${capacity[@]}"
    return
  fi
  run gcloud compute tpus queued-resources create "$TPU_NAME" --node-id "$TPU_NAME" "${LOCATION[@]}" \
    --accelerator-type "$ACCELERATOR_TYPE" --runtime-version "$RUNTIME_VERSION" "${capacity[@]}"
  [[ "$NO_WAIT" != 1 ]] || return 0
  local state=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${LOCATION[@]}" --format 'value(state.state)')
  if dry; then
    run "${state[@]}"  # polled every 60 s until ACTIVE
    return
  fi
  local now
  while true; do
    now="$("${state[@]}")"
    case "$now" in
      ACTIVE) return ;;
      FAILED|SUSPENDED)
        die "queued resource $TPU_NAME is $now; 'gcloud compute tpus queued-resources describe' says why" ;;
    esac
    printf '%s: queued resource %s is %s; checking again in 60 s\n' "$SCRIPT" "$TPU_NAME" "$now" >&2
    sleep 60
  done
}

setup() {
  local dir install fetch
  dir="$(quote "$REMOTE_DIR")"
  install="$(quote "$PYTHON") -m pip install --quiet --upgrade $(quote "jax[tpu]$JAX_PIN")"
  if [[ -n "$REPO" && -n "$WHEEL" ]]; then
    die "give either --repo or --wheel, not both"
  elif [[ -n "$REPO" ]]; then
    fetch="git clone --quiet $(quote "$REPO") $dir"
    fetch="if [ -d $dir/.git ]; then git -C $dir fetch --quiet origin; else $fetch; fi"
    ssh_workers all "$fetch && git -C $dir checkout --quiet --detach $(quote "$REF") && cd $dir && $install -e ."
  elif [[ -n "$WHEEL" ]]; then
    { dry || [[ -f "$WHEEL" ]]; } ||
      die "--wheel $WHEEL: no such file (build one with: python -m pip wheel --no-deps -w dist .)"
    ssh_workers all "mkdir -p $dir"
    run gcloud compute tpus tpu-vm scp "$WHEEL" "$TPU_NAME:$REMOTE_DIR/" "${LOCATION[@]}" --worker=all
    run gcloud compute tpus tpu-vm scp --recurse "$REPO_ROOT/configs" "$TPU_NAME:$REMOTE_DIR/" "${LOCATION[@]}" \
      --worker=all
    ssh_workers all "cd $dir && $install $(quote "./${WHEEL##*/}")"
  else
    die "setup needs --repo URL (git) or --wheel FILE (or LUMIERE_REPO / LUMIERE_WHEEL)"
  fi
}

# The job's files on a worker, relative to the remote directory.
log_file() { quote "logs/$JOB.log"; }
pid_file() { quote "logs/$JOB.pid"; }

start() {
  set_main_command "$PYTHON" "$CONFIG" "$WORKDIR" "$MODE"
  local job background
  job="$(quote "${MAIN_CMD[@]}")"
  if [[ "$FOREGROUND" == 1 ]]; then
    ssh_workers all "cd $(quote "$REMOTE_DIR") && $job"
  else
    background="nohup $job > $(log_file) 2>&1 < /dev/null & echo \$! > $(pid_file)"
    ssh_workers all "cd $(quote "$REMOTE_DIR") && mkdir -p logs && { $background; }"
    dry || printf '%s: started; follow it with: %s logs --name %s --zone %s --job %s\n' \
      "$SCRIPT" "$0" "$(quote "$TPU_NAME")" "$(quote "$ZONE")" "$(quote "$JOB")" >&2
  fi
}

logs() {
  ssh_workers "$WORKER" "tail -n +1 -F $(quote "$REMOTE_DIR")/$(log_file)"
}

stop() {
  ssh_workers all "cd $(quote "$REMOTE_DIR") && kill -TERM \"\$(cat $(pid_file))\""
}

delete() {
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$TPU_NAME" "${LOCATION[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOCATION[@]}" --quiet
  fi
}

case "$COMMAND" in
  create) create ;;
  setup) setup ;;
  run) start ;;
  logs) logs ;;
  stop) stop ;;
  delete) delete ;;
  *) die "unknown command '$COMMAND'; use create, setup, run, logs, stop or delete" ;;
esac
