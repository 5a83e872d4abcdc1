"""The kernel hooks extmod ships (``hookfiles/``) and where each package manager looks for
them: Debian's run-parts dirs, systemd's kernel-install plugins, pacman's alpm hooks, and a
systemd unit for boot-time autoinstall. ``install`` writes them under a root."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from extmod.core import atomic
from extmod.core.errors import UserError

PLACEHOLDER = "@EXTMOD@"
UNIT = "extmod-autoinstall.service"


@dataclass(frozen=True)
class HookFile:
    source: str  # name in hookfiles/
    dest: str  # path under the root
    mode: int


# Debian: linux-image-KVER.postinst/prerm and linux-headers-KVER.postinst call
# `run-parts --arg=KVER [--arg=IMAGE] /etc/kernel/{preinst,postinst,prerm,header_postinst}.d`.
# kernel-install(8) reads /usr/lib/kernel/install.d/*.install (and /etc/kernel/install.d).
# pacman reads /usr/share/libalpm/hooks/*.hook (alpm-hooks(5)).
KINDS: dict[str, tuple[HookFile, ...]] = {
    "debian": (
        HookFile("debian-preinst", "etc/kernel/preinst.d/extmod", 0o755),
        HookFile("debian-postinst", "etc/kernel/postinst.d/extmod", 0o755),
        HookFile("debian-postinst", "etc/kernel/header_postinst.d/extmod", 0o755),
        HookFile("debian-prerm", "etc/kernel/prerm.d/extmod", 0o755),
        # apt's guard (issue 25): the script is a conffile beside the kernel hooks, so
        # that apt never runs a command a removed extmod took away
        HookFile("apt-guard", "etc/kernel/extmod-apt-guard", 0o755),
        HookFile("apt-guard.conf", "etc/apt/apt.conf.d/80extmod-guard", 0o644),
    ),
    "kernel-install": (
        HookFile("kernel-install", "usr/lib/kernel/install.d/40-extmod.install", 0o755),
    ),
    "pacman": (
        HookFile("pacman-install.hook", "usr/share/libalpm/hooks/70-extmod-install.hook", 0o644),
        HookFile("pacman-remove.hook", "usr/share/libalpm/hooks/70-extmod-remove.hook", 0o644),
        HookFile("extmod-alpm", "usr/share/libalpm/scripts/extmod-alpm", 0o755),
    ),
    "systemd": (HookFile(UNIT, f"usr/lib/systemd/system/{UNIT}", 0o644),),
}
WANTS_LINK = f"etc/systemd/system/multi-user.target.wants/{UNIT}"

# What tells that a root uses each kind (checked when no --for is given).
_SIGNS: dict[str, tuple[str, ...]] = {
    "debian": ("var/lib/dpkg/status", "etc/kernel/postinst.d"),
    "kernel-install": ("usr/bin/kernel-install",),
    "pacman": ("etc/pacman.conf", "usr/share/libalpm"),
    "systemd": ("usr/lib/systemd/systemd", "lib/systemd/systemd"),
}


# Where extmod's Debian package puts the Debian hooks: DKMS's own paths, taken over with
# Replaces: dkms (debian/rules), so that no hook a removed dkms left behind runs beside them.
PACKAGED = {
    "etc/kernel/preinst.d/extmod": "etc/kernel/preinst.d/dkms",
    "etc/kernel/postinst.d/extmod": "etc/kernel/postinst.d/dkms",
    "etc/kernel/header_postinst.d/extmod": "etc/kernel/header_postinst.d/dkms",
    "etc/kernel/prerm.d/extmod": "etc/kernel/prerm.d/dkms",
}


def is_installed(root: Path, hook: HookFile) -> bool:
    """The hook is there: at its own path, or at the path the Debian package gives it."""
    if (root / hook.dest).exists():
        return True
    alias = root / PACKAGED.get(hook.dest, hook.dest)
    try:
        return "EXTMOD='" in alias.read_text(errors="replace")
    except OSError:
        return False


def detect(root: Path) -> list[str]:
    return [
        kind
        for kind, signs in _SIGNS.items()
        if any((root / s).exists() or (root / s).is_symlink() for s in signs)
    ]


def default_exec() -> str:
    """The ``extmod`` command the hooks run: the one beside this Python (a venv's), else the
    one on PATH, else /usr/bin/extmod (a distribution package)."""
    beside = Path(sys.executable).parent / "extmod"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("extmod") or "/usr/bin/extmod"


def text_of(hook: HookFile, executable: str) -> str:
    raw = resources.files("extmod").joinpath("hookfiles", hook.source).read_text()
    return raw.replace(PLACEHOLDER, executable)


@dataclass(frozen=True)
class Written:
    path: Path
    changed: bool


def install(
    root: Path, kinds: Iterable[str], executable: str, enable: bool = True
) -> list[Written]:
    """Write every hook of ``kinds`` under ``root``; a file already as it should be is left
    alone. The unit is enabled (the link `systemctl enable` makes) unless ``enable`` is off."""
    if not os.path.isabs(executable) or "'" in executable or "\n" in executable:
        raise UserError(f"--exec {executable}: give an absolute path without quotes")
    done: list[Written] = []
    for kind in kinds:
        for hook in KINDS[kind]:
            dest = root / hook.dest
            want = text_of(hook, executable)
            same = (
                dest.is_file()
                and not dest.is_symlink()
                and dest.read_text() == want
                and dest.stat().st_mode & 0o7777 == hook.mode
            )
            if not same:
                atomic.write_text(dest, want, mode=hook.mode)
            done.append(Written(dest, not same))
        if kind == "systemd" and enable:
            link = root / WANTS_LINK
            target = Path("/") / KINDS["systemd"][0].dest
            same = link.is_symlink() and Path(os.readlink(link)) == target
            if not same:
                atomic.symlink(link, target)
            done.append(Written(link, not same))
    return done


def remove(root: Path, kinds: Iterable[str]) -> list[Path]:
    """Take out the hooks of ``kinds`` that extmod wrote (a file is extmod's when it carries
    the "Written by `extmod install-hooks`" line); other files are left alone."""
    gone: list[Path] = []
    for kind in kinds:
        paths = [root / h.dest for h in KINDS[kind]]
        if kind == "systemd":
            link = root / WANTS_LINK
            if link.is_symlink():
                link.unlink()
                gone.append(link)
        for path in paths:
            if path.is_file() and "extmod install-hooks" in path.read_text(errors="replace"):
                path.unlink()
                gone.append(path)
    return gone
