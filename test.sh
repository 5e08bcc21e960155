#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs, then pytest on 8 fake CPU devices.
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure_env.sh test,seqio,tfds,tpu-aot
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider --durations=15 "$@"
