#!/usr/bin/env bash
# The main job on the bundled example: list kernels, build examples/hello for the newest
# kernel whose headers are installed, with that kernel's own toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
kver=$(find /lib/modules -mindepth 2 -maxdepth 2 -name build -printf '%h\n' | xargs -n1 basename | sort -V | tail -n1)
[ -n "$kver" ] || { echo "demo: no /lib/modules/*/build after setup" >&2; exit 4; }
.venv/bin/extmod kernels
.venv/bin/extmod build examples/hello -k "$kver"
