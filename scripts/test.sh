#!/usr/bin/env bash
# The whole test suite: installs what it needs, prepares (or reuses) the cached real kernel
# trees, then runs every test, slow ones (real builds, qemu boots) included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/python scripts/testtrees.py
exec .venv/bin/python -m pytest tests "$@"
