#!/usr/bin/env bash
# TPU jobs on a GKE cluster with XPK (https://github.com/AI-Hypercomputer/xpk): create, list, logs, delete.
#
# Usage: launch/tpu/xpk.sh COMMAND [flags] [-- job flags]
#
#   create   submits python -m lumiere_jax.main as an XPK workload on --num-slices slices of
#            --tpu-type; flags after -- go to the job verbatim (--config.a.b=value overrides).
#            Multi-slice jobs also need the job flag --config.mesh.dcn.data=NUM_SLICES.
#   list     the cluster's workloads and their state
#   logs     follows the logs of --worker (default 0: slice 0, host 0; "all" for every pod) with kubectl
#   delete   deletes the workload
#
# Flags (or the LUMIERE_* environment variable in brackets):
#   --cluster NAME            the GKE cluster XPK created [LUMIERE_CLUSTER]                 (all)
#   --workload NAME           the workload (job) name [LUMIERE_WORKLOAD]            (create, logs, delete)
#   --tpu-type TYPE           e.g. v5p-128, v6e-256 [LUMIERE_TPU_TYPE]                       (create)
#   --num-slices N            default 1 [LUMIERE_NUM_SLICES]
#   --project PROJECT         default: gcloud's configured project [LUMIERE_PROJECT]
#   --zone ZONE               the cluster's zone [LUMIERE_ZONE]                              (logs)
#   --docker-image IMAGE      an image with the project and jax[tpu] installed [LUMIERE_DOCKER_IMAGE]
#   --base-docker-image IMAGE or: an image with the dependencies; XPK adds --script-dir to it
#                             and the job runs from there [LUMIERE_BASE_DOCKER_IMAGE]
#   --script-dir DIR          default: this repository [LUMIERE_SCRIPT_DIR]
#   --priority P              XPK priority (very-low .. very-high) [LUMIERE_PRIORITY]
#   --max-restarts N          restarts of the whole workload on failure [LUMIERE_MAX_RESTARTS]
#   --python PYTHON           interpreter in the image (default python3) [LUMIERE_PYTHON]
#   --config FILE             e.g. configs/stunet_paper.py [LUMIERE_CONFIG]                  (create)
#   --workdir DIR             the job's output directory (a mounted bucket) [LUMIERE_WORKDIR] (create)
#   --mode MODE               train (default), sample, ... [LUMIERE_MODE]
#   --env KEY=VALUE           set for the job (repeatable)
#   --worker 0|all            logs: which pods [LUMIERE_WORKER]
#   --dry-run                 print every command instead of running it [LUMIERE_DRY_RUN=1]
#
# Example:
#   launch/tpu/xpk.sh create --cluster my-v5p --workload paper-1 --tpu-type v5p-256 --num-slices 2 \
#       --docker-image gcr.io/PROJECT/lumiere:latest --config configs/stunet_paper.py --workdir /gcs/runs/paper-1 \
#       -- --config.mesh.dcn.data=2 --config.mesh.shape.fsdp=8

# shellcheck source=SCRIPTDIR/../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

declare -A FLAG_VARS=(
  [--cluster]=CLUSTER [--workload]=WORKLOAD [--tpu-type]=TPU_TYPE [--num-slices]=NUM_SLICES
  [--project]=PROJECT [--zone]=ZONE [--docker-image]=DOCKER_IMAGE [--base-docker-image]=BASE_DOCKER_IMAGE
  [--script-dir]=SCRIPT_DIR [--priority]=PRIORITY [--max-restarts]=MAX_RESTARTS [--python]=PYTHON
  [--config]=CONFIG [--workdir]=WORKDIR [--mode]=MODE [--env]='ENV_ITEMS[]' [--worker]=WORKER
)
declare -A BOOL_FLAGS=()

CLUSTER="${LUMIERE_CLUSTER:-}"
WORKLOAD="${LUMIERE_WORKLOAD:-}"
TPU_TYPE="${LUMIERE_TPU_TYPE:-}"
NUM_SLICES="${LUMIERE_NUM_SLICES:-1}"
PROJECT="${LUMIERE_PROJECT:-}"
ZONE="${LUMIERE_ZONE:-}"
DOCKER_IMAGE="${LUMIERE_DOCKER_IMAGE:-}"
BASE_DOCKER_IMAGE="${LUMIERE_BASE_DOCKER_IMAGE:-}"
SCRIPT_DIR="${LUMIERE_SCRIPT_DIR:-$REPO_ROOT}"
PRIORITY="${LUMIERE_PRIORITY:-}"
MAX_RESTARTS="${LUMIERE_MAX_RESTARTS:-}"
PYTHON="${LUMIERE_PYTHON:-python3}"
CONFIG="${LUMIERE_CONFIG:-}"
WORKDIR="${LUMIERE_WORKDIR:-}"
MODE="${LUMIERE_MODE:-train}"
WORKER="${LUMIERE_WORKER:-0}"

check_command "${1:-}"
COMMAND="$1"
shift
parse_flags "$@"
require "$CLUSTER" --cluster
SCOPE=()
[[ -z "$PROJECT" ]] || SCOPE+=("--project=$PROJECT")
[[ -z "$ZONE" ]] || SCOPE+=("--zone=$ZONE")

create() {
  require "$WORKLOAD" --workload
  require "$TPU_TYPE" --tpu-type
  [[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || die "--num-slices $NUM_SLICES must be a positive integer"
  set_main_command "$PYTHON" "$CONFIG" "$WORKDIR" "$MODE"
  local image=()
  if [[ -n "$DOCKER_IMAGE" && -n "$BASE_DOCKER_IMAGE" ]]; then
    die "give either --docker-image or --base-docker-image, not both"
  elif [[ -n "$DOCKER_IMAGE" ]]; then
    image=("--docker-image=$DOCKER_IMAGE")
  elif [[ -n "$BASE_DOCKER_IMAGE" ]]; then
    image=("--base-docker-image=$BASE_DOCKER_IMAGE" "--script-dir=$SCRIPT_DIR")
  else
    die "create needs --docker-image or --base-docker-image (or LUMIERE_DOCKER_IMAGE / LUMIERE_BASE_DOCKER_IMAGE)"
  fi
  if ((NUM_SLICES > 1)) && [[ " ${EXTRA_ARGS[*]} " != *" --config.mesh.dcn."* ]]; then
    printf '%s: warning: %s slices but no --config.mesh.dcn.* override; the mesh will not span slices\n' \
      "$SCRIPT" "$NUM_SLICES" >&2
  fi
  local options=()
  [[ -z "$PRIORITY" ]] || options+=("--priority=$PRIORITY")
  [[ -z "$MAX_RESTARTS" ]] || options+=("--max-restarts=$MAX_RESTARTS")
  run xpk workload create "--cluster=$CLUSTER" "--workload=$WORKLOAD" "--tpu-type=$TPU_TYPE" \
    "--num-slices=$NUM_SLICES" "${image[@]}" "${options[@]}" "${SCOPE[@]}" \
    "--command=$(quote "${MAIN_CMD[@]}")"
}

logs() {
  require "$WORKLOAD" --workload
  require "$ZONE" --zone
  local selector="jobset.sigs.k8s.io/jobset-name=$WORKLOAD"
  case "$WORKER" in
    all) ;;
    0) selector+=",jobset.sigs.k8s.io/job-index=0,batch.kubernetes.io/job-completion-index=0" ;;
    *) die "--worker $WORKER: use 0 or all" ;;
  esac
  local project=()
  [[ -z "$PROJECT" ]] || project=(--project "$PROJECT")
  # XPK clusters are regional: the region is the zone without its last part.
  run gcloud container clusters get-credentials "$CLUSTER" --region "${ZONE%-*}" "${project[@]}"
  run kubectl logs --follow --prefix --all-containers --max-log-requests=1000 --selector "$selector"
}

case "$COMMAND" in
  create) create ;;
  list) run xpk workload list "--cluster=$CLUSTER" "${SCOPE[@]}" ;;
  logs) logs ;;
  delete)
    require "$WORKLOAD" --workload
    run xpk workload delete "--cluster=$CLUSTER" "--workload=$WORKLOAD" "${SCOPE[@]}" ;;
  *) die "unknown command '$COMMAND'; use create, list, logs or delete" ;;
esac
