#!/usr/bin/env bash
# The main job on the bundled example: list kernels, then the DKMS lifecycle of
# examples/dkms-pair (two modules, a compound MAKE line) for the newest kernel whose headers
# are installed, in a staging root (/var/tmp/extmod-demo) so the machine's /lib/modules is
# not touched: install (build with the kernel's toolchain, strip, sign, depmod), status,
# doctor, then remove.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
kver=$(find /lib/modules -mindepth 2 -maxdepth 2 -name build -printf '%h\n' | xargs -n1 basename | sort -V | tail -n1)
[ -n "$kver" ] || { echo "demo: no /lib/modules/*/build after setup" >&2; exit 4; }
root=/var/tmp/extmod-demo
rm -rf "$root"
mkdir -p "$root/lib/modules/$kver" "$root/etc"
tree=$(readlink -f "/lib/modules/$kver/build")
ln -s "$(realpath --relative-to="$root/lib/modules/$kver" "$tree")" "$root/lib/modules/$kver/build"
cp /etc/os-release "$root/etc/os-release"
extmod=(.venv/bin/extmod --root "$root")
.venv/bin/extmod kernels
"${extmod[@]}" install examples/dkms-pair -k "$kver"
"${extmod[@]}" status
"${extmod[@]}" doctor -k "$kver"
find "$root/lib/modules/$kver" -name '*.ko' -exec modinfo -F signer {} +
"${extmod[@]}" remove extmod-pair --all
