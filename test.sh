#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs, then pytest on 8 fake CPU devices.
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure_env.sh test,seqio,tfds,tpu-aot,metrics,c2pa
# The shellcheck linter checks the launch scripts (tests/test_launch.py); a Debian package, installed once.
if ! command -v shellcheck >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck) >/dev/null 2>&1 \
      || echo "test.sh: could not install shellcheck; its lint test will be skipped" >&2
  else
    echo "test.sh: shellcheck is not installed (apt-get install shellcheck); its lint test will be skipped" >&2
  fi
fi
# Two test processes (TEST_WORKERS): XLA compiles on one thread, so a second process fills the other
# core; whole files go to one process (--dist loadfile), so module-scoped fixtures are built once.
# With no path given pytest runs pytest.ini's testpaths (tests/); a path given runs only that.
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
