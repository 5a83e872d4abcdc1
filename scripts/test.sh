#!/usr/bin/env bash
# The whole test suite: installs what it needs, prepares (or reuses) the cached real kernel
# trees, then runs every test, slow ones (real builds, qemu boots) included. pytest prints
# the wall time of each part (setup, trees, tests) just before its closing line.
# --fast: the fast tests alone (pytest -m "not slow"), with what they need; no kernel trees.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
if [ "${1:-}" = --fast ]; then
  shift
  scripts/setup.sh fast
  export EXTMOD_TEST_WALL="setup $((SECONDS - t0)) s, trees 0 s (--fast)"
  exec .venv/bin/python -m pytest tests -m "not slow" "$@"
fi
scripts/setup.sh test
t1=$SECONDS
.venv/bin/python scripts/testtrees.py
t2=$SECONDS
export EXTMOD_TEST_WALL="setup $((t1 - t0)) s, trees $((t2 - t1)) s"
exec .venv/bin/python -m pytest tests "$@"
