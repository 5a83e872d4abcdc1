"""The one place a fix names a package (issue 24: 14 literal ``apt-get install`` hints,
although extmod also ships RPM and Arch packages).

A hint is given by Debian's package name, the name extmod's own tests use; ``install``
turns it into the command of the distribution the message is for: the host's for a tool
extmod runs, the root's for a kernel's headers or image. Names differ by family (Debian's
``busybox-static`` is Fedora's and Arch's ``busybox``; ``linux-headers-KVER`` is Fedora's
``kernel-devel-KVER`` and Arch's ``linux-headers``); a family extmod does not know gets
Debian's name with the family left to the reader.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

HOST_OS_RELEASE = Path("/etc/os-release")

# Debian package name (a pattern) -> the name on Fedora and on Arch (None: the same name)
_RENAMES: tuple[tuple[str, Callable[[re.Match[str]], str], Callable[[re.Match[str]], str]], ...] = (
    (r"linux-headers-(.+)", lambda m: f"kernel-devel-{m[1]}", lambda m: "linux-headers"),
    (r"linux-image-(.+)", lambda m: f"kernel-core-{m[1]}", lambda m: "linux"),
    (r"(gcc|clang|lld|llvm)-\d+", lambda m: m[1], lambda m: m[1]),
    (r"busybox-static", lambda m: "busybox", lambda m: "busybox"),
    (r"qemu-system-x86", lambda m: "qemu-system-x86-core", lambda m: "qemu-system-x86"),
    (r"qemu-system-arm", lambda m: "qemu-system-aarch64-core", lambda m: "qemu-system-aarch64"),
    (r"binutils-(.+)", lambda m: f"binutils-{m[1]}", lambda m: f"{m[1]}-binutils"),
)
_COMMANDS = {"debian": "apt-get install", "fedora": "dnf install", "arch": "pacman -S"}
_FAMILIES = {
    "debian": "debian",
    "ubuntu": "debian",
    "fedora": "fedora",
    "rhel": "fedora",
    "centos": "fedora",
    "arch": "arch",
}


def distro_ids(os_release: Path = HOST_OS_RELEASE) -> list[str]:
    """ID then ID_LIKE of an os-release file ("debian", "fedora rhel", ...); [] if none."""
    try:
        text = os_release.read_text(errors="replace")
    except OSError:
        return []
    ids: list[str] = []
    for key in ("ID", "ID_LIKE"):
        m = re.search(rf'^{key}="?([^"\n]*)"?$', text, re.M)
        if m:
            ids += m.group(1).split()
    return ids


def family(os_release: Path = HOST_OS_RELEASE) -> str:
    """debian, fedora or arch from ID then ID_LIKE of an os-release file; "" if unknown."""
    return next((_FAMILIES[i] for i in distro_ids(os_release) if i in _FAMILIES), "")


def package(debian_name: str, fam: str) -> str:
    """A package's name in a family, from Debian's."""
    if fam not in ("fedora", "arch"):
        return debian_name
    for pattern, fedora, arch in _RENAMES:
        m = re.fullmatch(pattern, debian_name)
        if m:
            return (fedora if fam == "fedora" else arch)(m)
    return debian_name


def install(*debian_names: str, os_release: Path = HOST_OS_RELEASE) -> str:
    """The command that installs packages here: ``apt-get install X`` on Debian and
    Ubuntu, ``dnf install Y`` on Fedora and RHEL, ``pacman -S Z`` on Arch; elsewhere
    "install X (Debian's name)"."""
    fam = family(os_release)
    if fam not in _COMMANDS:
        return f"install {' '.join(debian_names)} (Debian's name)"
    return f"{_COMMANDS[fam]} {' '.join(package(n, fam) for n in debian_names)}"
