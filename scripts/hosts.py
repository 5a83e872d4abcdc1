"""What the two README commands need on each Debian release they run on (issue 33), as
data: one ``Host`` per release, keyed by ``VERSION_CODENAME`` of /etc/os-release. The apt
packages of each profile (``demo``: the demo; ``fast``: the fast suite; ``test``: the whole
suite), the toolchains of the clang ThinLTO trees, the host's own linux-source, and whether
testtrees.py makes its trees there yet (its recipes are Debian 12's: on Debian 13 it says
so in one line).

``python3 scripts/hosts.py apt PROFILE`` prints this host's packages for PROFILE, one a line
(scripts/setup.sh installs them); ``python3 scripts/hosts.py show`` prints the host's entry.
An unknown release is an error naming /etc/os-release and the releases known. Stdlib only:
it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

# The demo: kernel headers, a compiler, the tools an install runs (depmod, openssl, patch,
# and xz: Debian 13's kernels compress their modules with it).
DEMO = (
    "linux-headers-amd64",
    "make",
    "gcc",
    "python3",
    "python3-venv",
    "kmod",
    "openssl",
    "patch",
    "xz-utils",
)
# The fast suite on top: what its tests run besides Python (dpkg-deb, xz and ar for the
# hostile .deb corpus; tmux, zsh, bash-completion for the completions; man-db and groff
# for the man page; busybox-static, the static binary the VM's initramfs takes; procps,
# util-linux; git for the checkout itself).
FAST = (
    *DEMO,
    "procps",
    "util-linux",
    "xz-utils",
    "binutils",
    "cpio",
    "tmux",
    "zsh",
    "bash-completion",
    "man-db",
    "groff-base",
    "busybox-static",
    "git",
)
# The whole suite on top, common to every release: the kernel build tools, qemu, the
# chroots, the packaging tools (see scripts/setup.sh for what each is for).
WHOLE = (
    *FAST,
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "dwarves",
    "qemu-system-x86",
    "ccache",
    "redis-tools",
    "distcc",
    "apt-utils",
    "libxtables-dev",
    "pkg-config",
    "iptables",
    "systemd",
    "mmdebstrap",
    "debhelper",
    "dh-python",
    "pybuild-plugin-pyproject",
    "python3-all",
    "python3-setuptools",
    "dpkg-dev",
    "lintian",
    "fakeroot",
    "rpm",
    "makepkg",
    "libarchive-tools",
)


@dataclass(frozen=True)
class Host:
    release: str  # Debian's number
    codename: str
    linux_source: str  # the series of the host's own linux-source package
    clangs: tuple[str, ...]  # the LLVM versions the trees are built with (first: the main)
    whole_suite: bool  # whether testtrees.py makes its trees on this host yet

    def apt(self, profile: str) -> tuple[str, ...]:
        if profile == "demo":
            return DEMO
        if profile == "fast":
            return FAST
        if profile == "test":
            llvm = tuple(f"{tool}-{v}" for v in self.clangs for tool in ("clang", "lld", "llvm"))
            return (*WHOLE, f"linux-source-{self.linux_source}", *llvm)
        raise SystemExit(f"hosts.py: unknown profile {profile!r} (demo, fast, test)")


HOSTS = {
    h.codename: h
    for h in (
        Host(
            "12",
            "bookworm",
            "6.1",
            ("16", "19"),
            True,
        ),
        Host(
            "13",
            "trixie",
            "6.12",
            ("19",),
            False,
        ),
    )
}

OS_RELEASE = Path("/etc/os-release")


def this_host(os_release: Path = OS_RELEASE) -> Host:
    text = os_release.read_text() if os_release.is_file() else ""
    m = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?$", text, re.M)
    name = m.group(1) if m else ""
    if name not in HOSTS:
        raise SystemExit(
            f"{os_release}: VERSION_CODENAME={name or '(none)'}: extmod's scripts know "
            f"Debian {', '.join(f'{h.release} ({h.codename})' for h in HOSTS.values())}"
        )
    return HOSTS[name]


def main(argv: list[str]) -> int:
    host = this_host()
    if argv[:1] == ["apt"] and len(argv) == 2:
        print("\n".join(host.apt(argv[1])))
        return 0
    if argv == ["show"]:
        print(host)
        return 0
    print("usage: hosts.py apt demo|fast|test | show", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
