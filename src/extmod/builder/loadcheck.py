"""Will a module load? Checked after the build, before anything is installed: a module that
built can still fail to load, or worse (dkms issue 416), and the place to learn it is not
the next boot.

Four checks, each what the kernel's module loader (kernel/module/, 6.1) refuses:
- vermagic: its first word must be the kernel's release;
- every undefined symbol must be exported by the kernel (its Module.symvers), by a module
  of the same package or by a module of a BUILD_DEPENDS package;
- on CONFIG_MODVERSIONS kernels, the CRC the module recorded for each symbol (its
  __versions section) must be the one the kernel exports ("disagrees about version of
  symbol");
- on those kernels, a symbol another module exports needs a CRC in the module too:
  check_version (kernel/module/version.c) prints "no symbol version for" and refuses the
  load when there is none, which is what a module built without its exporter's
  Module.symvers (KBUILD_EXTRA_SYMBOLS) gets from modpost. ``extmod verify`` found this
  one: such a module passed the first three checks and failed to load in the VM.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from extmod.core import run
from extmod.core.errors import EnvError
from extmod.kernel.kernel import Kernel

_NM_LINE = re.compile(r"^\s*(?:[0-9a-fA-F]+\s+)?(?P<kind>[A-Za-z])\s+(?P<name>\S+)$")


@dataclass(frozen=True)
class Module:
    path: Path
    vermagic: str
    undefined: frozenset[str]
    exported: frozenset[str]
    crcs: dict[str, int]  # symbol -> CRC from __versions (MODVERSIONS modules)


def kernel_exports(kernel: Kernel) -> dict[str, int] | None:
    """Module.symvers of the kernel tree: symbol -> CRC; None when the tree has none (a
    tree only `make modules_prepare`d)."""
    f = kernel.build_dir / "Module.symvers"
    try:
        text = f.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise EnvError(f"{f}: cannot read: {e.strerror}") from None
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            try:
                out[parts[1]] = int(parts[0], 16)
            except ValueError:
                continue
    return out


def read(ko: Path) -> Module:
    nm = run.system_tool("nm", "binutils")
    modinfo, modprobe = run.system_tool("modinfo", "kmod"), run.system_tool("modprobe", "kmod")
    try:
        vermagic = run.capture([modinfo, "-F", "vermagic", ko]).strip()
        undefined, exported = set(), set()
        for line in run.capture([nm, ko]).splitlines():
            m = _NM_LINE.match(line)
            if not m:
                continue
            if m["kind"] == "U":
                undefined.add(m["name"])
            elif m["name"].startswith("__ksymtab_"):
                exported.add(m["name"][len("__ksymtab_") :])
        crcs = {}
        try:
            versions = run.capture([modprobe, "--dump-modversions", ko])
        except run.CommandFailed:
            versions = ""  # no __versions section: built for a kernel without MODVERSIONS
        for line in versions.splitlines():
            parts = line.split()
            if len(parts) == 2:
                crcs[parts[1]] = int(parts[0], 16)
    except run.CommandFailed as e:
        raise EnvError(f"cannot read {ko}: {e.argv[0]} exited with {e.returncode}") from None
    return Module(ko, vermagic, frozenset(undefined), frozenset(exported), crcs)


def check(
    modules: Iterable[Module],
    kernel: Kernel,
    exports: dict[str, int] | None,
    other_exports: Iterable[str] = (),
) -> list[str]:
    """The problems that would stop these modules loading into ``kernel``, one line each.
    ``exports``: ``kernel_exports(kernel)``; ``other_exports``: what the package's
    BUILD_DEPENDS modules export."""
    mods = list(modules)
    ours = set(other_exports).union(*(m.exported for m in mods))
    modversions = kernel.config.get("CONFIG_MODVERSIONS") == "y"
    problems = []
    for m in mods:
        release = m.vermagic.split()[0] if m.vermagic else ""
        if release != kernel.release:
            problems.append(f"{m.path.name}: vermagic {m.vermagic!r} is not for {kernel.release}")
        if exports is None:
            continue  # no Module.symvers: nothing to check symbols against
        for sym in sorted(m.undefined):
            if sym not in exports and sym not in ours:
                problems.append(
                    f"{m.path.name}: unknown symbol {sym}: neither "
                    f"{kernel.release} nor this package or its BUILD_DEPENDS "
                    f"export it"
                )
        if modversions and m.crcs:
            problems += [
                f"{m.path.name}: no symbol version for {sym}: built without the "
                f"Module.symvers of the module that exports it (KBUILD_EXTRA_SYMBOLS)"
                for sym in sorted(m.undefined - m.exported - exports.keys())
                if sym in ours and sym not in m.crcs
            ]
        if modversions:
            for sym, crc in sorted(m.crcs.items()):
                if sym in exports and exports[sym] != crc:
                    problems.append(
                        f"{m.path.name}: symbol {sym} has CRC {crc:#010x}, "
                        f"{kernel.release} exports {exports[sym]:#010x} "
                        f'("disagrees about version of symbol")'
                    )
    return problems
