#!/usr/bin/env bash
# The side-by-side benchmark (docs/dev/benchmark.md): installs what it needs (apt, pip), fetches
# Debian's dkms 3.0.10 and the 12 DKMS packages with apt-get download (unpacked, never
# installed: its kernel hooks stay out of the system), prepares the kernel trees, then runs
# bench/compare.py, which prints the table. Arguments go to bench/compare.py.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/python scripts/testtrees.py
exec .venv/bin/python bench/compare.py "$@"
