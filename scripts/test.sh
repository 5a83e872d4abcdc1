#!/usr/bin/env bash
# The whole test suite: installs what it needs, prepares (or reuses) the cached real kernel
# trees, then runs every test, slow ones (real builds, qemu boots) included. pytest prints
# the wall time of each part (setup, trees, tests) just before its closing line.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
scripts/setup.sh test
t1=$SECONDS
.venv/bin/python scripts/testtrees.py
t2=$SECONDS
export EXTMOD_TEST_WALL="setup $((t1 - t0)) s, trees $((t2 - t1)) s"
exec .venv/bin/python -m pytest tests "$@"
