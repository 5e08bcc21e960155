#!/usr/bin/env bash
# Creates .venv (ignored by git) and installs the project with the given extras, once per
# version of setup.py and set of extras; later calls return at once.
# Usage: scripts/ensure_env.sh EXTRAS        e.g. scripts/ensure_env.sh test,seqio,tfds,tpu-aot
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv=.venv
stamp="$venv/.installed-$(cat setup.py | sha256sum | cut -c1-16)-${extras//,/_}"
if [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
spec="."
if [ -n "$extras" ]; then
  spec=".[$extras]"
fi
echo "Installing lumiere_jax${extras:+ with extras [$extras]} into $venv (first run only) ..." >&2
"$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel >&2
# torch==2.13.0 (test extra) resolves to the local CPU wheel; nothing else is heavy but TensorFlow (tfds, seqio).
"$venv/bin/python" -m pip install --quiet -e "$spec" >&2
touch "$stamp"
