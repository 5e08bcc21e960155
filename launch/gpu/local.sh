#!/usr/bin/env bash
# One host with one or more NVIDIA GPUs: install jax[cuda] and the project, or run a job on every local GPU.
#
# Usage: launch/gpu/local.sh install|run [flags] [-- job flags]
#
#   install  pip-installs jax[cuda12] (or --cuda 13) at setup.py's version, then this repository (editable)
#   run      python -m lumiere_jax.main on this host; one process drives all local GPUs (the mesh's
#            -1 axis takes them all). Flags after -- go to the job verbatim (--config.a.b=value overrides).
#
# Flags (or the LUMIERE_* environment variable in brackets):
#   --python PYTHON    interpreter, e.g. a venv's (default python3) [LUMIERE_PYTHON]
#   --cuda 12|13       CUDA major version of the jax wheels (default 12) [LUMIERE_CUDA]      (install)
#   --config FILE      e.g. configs/stunet_paper.py, relative to the current directory [LUMIERE_CONFIG] (run)
#   --workdir DIR      the job's output directory [LUMIERE_WORKDIR]                          (run)
#   --mode MODE        train (default), sample, export, ... [LUMIERE_MODE]
#   --env KEY=VALUE    set for the job (repeatable), e.g. XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
#   --dry-run          print every command instead of running it [LUMIERE_DRY_RUN=1]
#
# Example:
#   launch/gpu/local.sh install --python .venv/bin/python
#   launch/gpu/local.sh run --python .venv/bin/python --config configs/stunet_paper.py --workdir runs/paper \
#       -- --config.mesh.shape.fsdp=8 --config.data.batch_size=8

# shellcheck source=SCRIPTDIR/../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

declare -A FLAG_VARS=(
  [--python]=PYTHON [--cuda]=CUDA [--config]=CONFIG [--workdir]=WORKDIR [--mode]=MODE [--env]='ENV_ITEMS[]'
)
declare -A BOOL_FLAGS=()

PYTHON="${LUMIERE_PYTHON:-python3}"
CUDA="${LUMIERE_CUDA:-12}"
CONFIG="${LUMIERE_CONFIG:-}"
WORKDIR="${LUMIERE_WORKDIR:-}"
MODE="${LUMIERE_MODE:-train}"

check_command "${1:-}"
COMMAND="$1"
shift
parse_flags "$@"

case "$COMMAND" in
  install)
    [[ "$CUDA" == 12 || "$CUDA" == 13 ]] || die "--cuda $CUDA: jax publishes wheels for CUDA 12 and 13"
    run "$PYTHON" -m pip install --upgrade "jax[cuda$CUDA]$JAX_PIN"
    run "$PYTHON" -m pip install -e "$REPO_ROOT" ;;
  run)
    set_main_command "$PYTHON" "$CONFIG" "$WORKDIR" "$MODE"
    run "${MAIN_CMD[@]}" ;;
  *) die "unknown command '$COMMAND'; use install or run" ;;
esac
