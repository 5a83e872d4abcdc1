"""The module tree of a kernel, /lib/modules/KVER: where DKMS packages' modules go on each
distribution, paths confined to the tree, the modules already there by name, and depmod."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

from extmod.core import hints, run
from extmod.core.config import Config
from extmod.core.errors import EnvError, UserError
from extmod.core.paths import Paths
from extmod.kernel.finish import module_stem

# Where DKMS 3.0.10 (override_dest_module_location) puts every module, by distribution ID
# from os-release; other distributions get DEST_MODULE_LOCATION as written.
_DISTRO_LOCATIONS = (
    (("debian", "ubuntu", "arch"), "/updates/dkms"),
    (("fedora", "rhel", "ovm"), "/extra"),
    (("sles", "suse", "opensuse"), "/updates"),
)


def distro_ids(paths: Paths) -> list[str]:
    """ID then ID_LIKE of ROOT/etc/os-release ("debian", "fedora rhel", ...); [] if none."""
    return hints.distro_ids(paths.os_release)


def distro_location(paths: Paths) -> str | None:
    ids = distro_ids(paths)
    for names, location in _DISTRO_LOCATIONS:
        if any(i.startswith(n) for i in ids for n in names):
            return location
    return None


def dest_location(config: Config, paths: Paths, written: str) -> str:
    if config.install_location == "auto":
        return distro_location(paths) or written
    return written


def confined(base: Path, rel: str) -> Path:
    """``base/rel``, refusing anything that leaves ``base`` (by .. or by a symlink)."""
    target = base / rel.lstrip("/")
    real_base = base.resolve()
    real = target.parent.resolve() / target.name
    if real_base != real and real_base not in real.parents:
        raise UserError(f"DEST_MODULE_LOCATION {rel!r} leads outside {base}")
    return target


def modules_by_name(tree: Path, skip: set[Path]) -> dict[str, list[Path]]:
    """Every module file under /lib/modules/KVER (but build/, source/ and ``skip``), by
    module name (``-`` and ``_`` are the same to the kernel); one walk per install."""
    index: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        if dirpath == str(tree):
            dirnames[:] = [d for d in dirnames if d not in ("build", "source")]
        for fn in filenames:
            stem = module_stem(fn)
            p = Path(dirpath) / fn
            if stem is not None and p not in skip:
                index.setdefault(stem.replace("-", "_"), []).append(p)
    return index


def depmod(paths: Paths, kver: str) -> None:
    """``depmod -a`` for one kernel under the root (-b ROOT), with its System.map if any."""
    argv: list[str | Path] = ["depmod", "-a"]
    with contextlib.ExitStack() as stack:
        base = paths.root
        if paths.install_tree is not None and paths.install_tree != base / "lib/modules":
            # depmod -b BASE works on BASE/lib/modules: a --installtree of another name is
            # reached through a link in a scratch dir
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="extmod-")))
            (base / "lib").mkdir()
            (base / "lib/modules").symlink_to(paths.install_tree.absolute())
        if base != Path("/"):
            argv += ["-b", base]
        system_map = paths.root / "boot" / f"System.map-{kver}"
        if system_map.exists():
            argv += ["-F", system_map]
        argv.append(kver)
        argv[0] = run.system_tool("depmod", "kmod")
        try:
            run.capture(argv)
        except run.CommandFailed as e:
            last = e.output.strip().splitlines()[-1:] or [""]
            raise EnvError(f"depmod failed for {kver}: {last[0]}") from None
        except subprocess.TimeoutExpired:
            raise EnvError(f"depmod for {kver} took over 60 s") from None
