#!/usr/bin/env bash
# Build extmod's Debian package with Debian's own tools (debhelper, pybuild) and check it
# with lintian. Usage: scripts/deb.sh [OUTDIR] (default: dist). The build runs in a copy of
# the repository's files under a temp dir, so nothing is written beside the checkout; the
# .deb, .buildinfo and .changes land in OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")

want=(debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools dpkg-dev
      lintian fakeroot)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deb: apt-get install ${missing[*]}"
  [ "$(id -u)" = 0 ] || { echo "deb: run as root to install packages" >&2; exit 1; }
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

work=$(mktemp -d /tmp/extmod-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/extmod"
if git rev-parse --git-dir >/dev/null 2>&1; then
  git ls-files -co --exclude-standard | tar -c -T - | tar -x -C "$work/extmod"
else
  tar -c --exclude=.venv --exclude=dist . | tar -x -C "$work/extmod"
fi
# Debian's python3 and tools, whatever PATH this shell was given (pyenv, a venv)
(cd "$work/extmod" && env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1) ||
  { tail -30 "$work/build.log" >&2; echo "deb: dpkg-buildpackage failed" >&2; exit 1; }
mkdir -p "$out"
cp "$work"/extmod_*.deb "$work"/extmod_*.buildinfo "$work"/extmod_*.changes "$out/"
deb=$(ls "$out"/extmod_*_all.deb | sort -V | tail -1)
# Every lintian tag that is kept is justified in debian/extmod.lintian-overrides.
env PATH=/usr/sbin:/usr/bin:/sbin:/bin lintian --fail-on warning,error "$deb"
echo "$deb"
