#!/usr/bin/env bash
# Install what extmod needs on Debian 12, idempotently: apt packages that are missing, and a
# virtualenv (.venv) with extmod and its test tools. Usage: scripts/setup.sh demo|test
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-demo}

apt_demo=(linux-headers-amd64 make gcc python3 python3-venv kmod openssl patch)
apt_test=("${apt_demo[@]}" procps linux-source-6.1 clang-16 lld-16 llvm-16 clang-19 lld-19 llvm-19 flex bison bc libelf-dev
          libssl-dev dwarves cpio xz-utils qemu-system-x86 busybox-static util-linux openssl ccache
          redis-tools distcc apt-utils
          libxtables-dev pkg-config iptables tmux systemd zsh bash-completion man-db groff-base
          mmdebstrap debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
          dpkg-dev lintian fakeroot rpm makepkg libarchive-tools)
# (libxtables-dev pkg-config iptables: what iptables-netflow-dkms depends on, for the DKMS
# parity test; tmux: the progress-view test; systemd: kernel-install and systemd-analyze for
# the hook tests; zsh, bash-completion: the completion tests; man-db, groff-base: man page;
# mmdebstrap: the Debian chroot of the apt tests; debhelper … fakeroot: scripts/deb.sh;
# rpm, makepkg, libarchive-tools: the RPM spec and the Arch PKGBUILD are built here too)
case "$profile" in
  demo) want=("${apt_demo[@]}") ;;
  test) want=("${apt_test[@]}") ;;
  *) echo "usage: $0 demo|test" >&2; exit 2 ;;
esac

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
[ "$profile" = test ] && extras="[test]"
stamp=".venv/.extmod-installed$extras"
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras"
  touch "$stamp"
fi
