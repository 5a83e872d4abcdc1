#!/usr/bin/env bash
# Install what extmod needs on Debian 12 or 13, idempotently: apt packages that are missing,
# and a virtualenv (.venv) with extmod and its test tools. Usage: scripts/setup.sh demo|fast|test
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-demo}

# What each profile needs on this host (its Debian release, from /etc/os-release) is one
# table, scripts/hosts.py: demo (the demo), fast (the fast suite), test (the whole suite).
case "$profile" in
  demo|fast|test) ;;
  *) echo "usage: $0 demo|fast|test" >&2; exit 2 ;;
esac
mapfile -t want < <(python3 scripts/hosts.py apt "$profile")
((${#want[@]})) || exit 1

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: apt-get install ${missing[*]}"
  [ "$(id -u)" = 0 ] || { echo "setup: run as root to install packages" >&2; exit 1; }
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

py=$(command -v python3)
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
extras=""
[ "$profile" != demo ] && extras="[test]"
stamp=".venv/.extmod-installed$extras"
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras"
  touch "$stamp"
fi
