# Shared by every launch script (sourced, not run): strict mode, flag parsing, dry runs, quoting.
#
# A script declares FLAG_VARS (flag -> variable; a variable name ending in [] collects a
# repeatable flag into an array) and BOOL_FLAGS (flag -> variable set to 1), initialises those
# variables from LUMIERE_* environment variables, then calls `parse_flags "$@"`. Everything after
# `--` lands in EXTRA_ARGS (the job's own flags, e.g. --config.a.b=value overrides).
# shellcheck shell=bash
set -euo pipefail

DRY_RUN="${LUMIERE_DRY_RUN:-0}"
EXTRA_ARGS=()
ENV_ITEMS=()
SCRIPT="${0##*/}"
# shellcheck disable=SC2034  # read by the scripts that source this file
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034
JAX_PIN='>=0.10,<0.11'  # setup.py's jax requirement, for jax[tpu] / jax[cuda12] installs

die() {
  printf '%s: %s\n' "$SCRIPT" "$*" >&2
  exit 2
}

# The leading comment block of the running script is its --help.
usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

# For scripts whose first argument is a command: --help prints the usage, a missing command fails with it.
check_command() {
  case "$1" in
    -h|--help) usage; exit 0 ;;
    ""|-*) usage >&2; die "the first argument must be a command (see above)" ;;
  esac
}

# Whether this is a dry run (--dry-run, or LUMIERE_DRY_RUN set to anything but 0).
dry() {
  [[ -n "$DRY_RUN" && "$DRY_RUN" != 0 ]]
}

set_flag() {
  local var="${FLAG_VARS[$1]:-}"
  [[ -n "$var" ]] || die "unknown flag $1 (see --help)"
  if [[ "$var" == *'[]' ]]; then
    local -n list="${var%[]}"
    list+=("$2")
  else
    printf -v "$var" '%s' "$2"
  fi
}

# Accepts --flag value, --flag=value, boolean --flag, --dry-run, --help, and -- before the job's flags.
# shellcheck disable=SC2034  # EXTRA_ARGS is read by the scripts that source this file
parse_flags() {
  while (($#)); do
    case "$1" in
      --) shift; EXTRA_ARGS=("$@"); return ;;
      --dry-run) DRY_RUN=1 ;;
      -h|--help) usage; exit 0 ;;
      --*=*) set_flag "${1%%=*}" "${1#*=}" ;;
      --*)
        if [[ -n "${BOOL_FLAGS[$1]:-}" ]]; then
          printf -v "${BOOL_FLAGS[$1]}" '%s' 1
        else
          (($# >= 2)) || die "$1 needs a value"
          set_flag "$1" "$2"
          shift
        fi ;;
      *) die "unexpected argument '$1'; the job's own flags go after --" ;;
    esac
    shift
  done
}

# require VALUE FLAG [ENV]: fails naming the flag and its environment variable (default
# LUMIERE_<variable of FLAG>) when VALUE is empty.
require() {
  local env="${3:-LUMIERE_${FLAG_VARS[$2]}}"
  [[ -n "$1" ]] || die "$2 (or $env) is required; see --help"
}

# One shell word per argument (printf %q), joined by spaces: safe to paste or send to a remote shell.
quote() {
  local out
  printf -v out '%q ' "$@"
  printf '%s' "${out% }"
}

# Runs a command, or with --dry-run prints it (one line, quoted) instead.
run() {
  if dry; then
    printf '%s\n' "$(quote "$@")"
  else
    "$@"
  fi
}

# Sets MAIN_CMD to the job's command: `env KEY=VALUE...` (the --env items) when there are any, then
# PYTHON -m lumiere_jax.main with --config, --workdir, --mode and EXTRA_ARGS (the flags after --).
# shellcheck disable=SC2034  # MAIN_CMD is read by the scripts that source this file
set_main_command() {
  local python="$1" config="$2" workdir="$3" mode="$4" item
  require "$config" --config
  require "$workdir" --workdir
  MAIN_CMD=()
  for item in "${ENV_ITEMS[@]}"; do
    [[ "$item" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$item' must be KEY=VALUE with KEY a variable name"
  done
  ((${#ENV_ITEMS[@]} == 0)) || MAIN_CMD=(env "${ENV_ITEMS[@]}")
  MAIN_CMD+=("$python" -m lumiere_jax.main "--config=$config" "--workdir=$workdir" "--mode=$mode" "${EXTRA_ARGS[@]}")
}
