"""Taking over what DKMS manages: ``extmod import-dkms``.

DKMS 3.x keeps its state in /var/lib/dkms (dkms(8), "dkms_tree"):
  NAME/VERSION/source               -> /usr/src/NAME-VERSION (the registered source)
  NAME/VERSION/KVER/ARCH/module/    the built modules, as installed (signed, compressed)
  NAME/kernel-KVER-ARCH             -> VERSION/KVER/ARCH: this build is installed
  NAME/original_module/KVER/ARCH/   in-tree modules an install moved aside
  mok.key, mok.pub                  the key pair it signs with (enrolled as a MOK)

Each package is registered, each build recorded with the modules DKMS built (nothing is
rebuilt), each installed build recorded with the files DKMS put in /lib/modules (found by
content), so extmod can later upgrade or uninstall them. DKMS's record of the package is
then moved out of its reach (STATE/dkms-imported/NAME), so that DKMS's own hooks no longer
build it too; moving it back undoes the hand-over.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extmod.builder import loadcheck
from extmod.core import atomic, digest
from extmod.core.errors import ExtmodError, UserError
from extmod.kernel import kernel, signing
from extmod.kernel.finish import MODULE_SUFFIXES, module_stem
from extmod.ops import registry
from extmod.ops.session import Outcome, Session
from extmod.store import state
from extmod.store.state import Added, BuildRecord, BuiltModule, Installed, InstalledFile

_KO = MODULE_SUFFIXES


@dataclass
class BuildPlan:
    kver: str
    arch: str
    modules: list[Path]  # DKMS's built files
    installed: dict[str, str] = field(default_factory=dict)  # module file -> path in KVER
    missing: list[str] = field(default_factory=list)  # installed per DKMS, not found


@dataclass
class PackagePlan:
    name: str
    version: str
    record: Path | None  # /var/lib/dkms/NAME; None: a /usr/src dir DKMS does not know
    source: Path | None
    problem: str | None
    builds: list[BuildPlan] = field(default_factory=list)

    @property
    def ident(self) -> str:
        return f"{self.name}/{self.version}"

    def data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": str(self.source or ""),
            "problem": self.problem,
            "builds": [
                {
                    "kernel": b.kver,
                    "arch": b.arch,
                    "modules": [m.name for m in b.modules],
                    "installed": b.installed,
                    "missing": b.missing,
                }
                for b in self.builds
            ],
        }


def plan(s: Session) -> list[PackagePlan]:
    """What DKMS has, read only."""
    base = s.paths.dkms_records
    plans: list[PackagePlan] = []
    if not base.is_dir():
        return plans
    trees = _ModuleTrees(s.paths.modules_dir)
    for ndir in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
        installed_links: dict[tuple[str, ...], Path] = {}
        for link in ndir.glob("kernel-*"):
            if link.is_symlink():
                # kernel-KVER-ARCH -> VERSION/KVER/ARCH
                parts = Path(os.readlink(link)).parts[-3:]
                if len(parts) == 3:
                    installed_links[parts] = link
        for vdir in sorted(
            p
            for p in ndir.iterdir()
            if p.is_dir() and not p.is_symlink() and p.name != "original_module"
        ):
            plans.append(_plan_version(s, ndir, vdir, installed_links, trees))
    return plans + _unregistered_sources(s, plans)


def _unregistered_sources(s: Session, known: list[PackagePlan]) -> list[PackagePlan]:
    """/usr/src/*/dkms.conf that neither DKMS nor extmod has registered (a -dkms package
    whose `dkms add` failed, say): registered too, with nothing built."""
    taken = {p.source.resolve() for p in known if p.source} | {
        a.source.resolve() for a in s.state.all_added()
    }
    found = []
    tree = s.paths.source_tree
    for conf in sorted(tree.glob("*/dkms.conf")) if tree.is_dir() else []:
        if conf.parent.resolve() in taken:
            continue
        try:
            name, version, _, _ = registry.check_add(s, str(conf.parent))
            found.append(PackagePlan(name, version, None, conf.parent, None))
        except ExtmodError as e:
            found.append(PackagePlan(conf.parent.name, "?", None, None, str(e)))
    return found


def _plan_version(
    s: Session,
    ndir: Path,
    vdir: Path,
    installed_links: dict[tuple[str, ...], Path],
    trees: _ModuleTrees,
) -> PackagePlan:
    name, version = ndir.name, vdir.name
    source = _source_of(s, vdir, name, version)
    problem = (
        None
        if source
        else (
            f"no source: {vdir / 'source'} and {s.paths.source_tree / f'{name}-{version}'} are gone"
        )
    )
    p = PackagePlan(name, version, ndir, source, problem)
    for kdir in sorted(
        d
        for d in vdir.iterdir()
        if d.is_dir() and d.name not in ("source", "build", "tarball", "driver_disk")
    ):
        for adir in sorted(d for d in kdir.iterdir() if (d / "module").is_dir()):
            mods = sorted(f for f in (adir / "module").iterdir() if f.name.endswith(_KO))
            if not mods:
                continue
            b = BuildPlan(kdir.name, adir.name, mods)
            if (version, kdir.name, adir.name) in installed_links:
                _find_installed(trees, b)
            p.builds.append(b)
    return p


def _source_of(s: Session, vdir: Path, name: str, version: str) -> Path | None:
    for candidate in (s.paths.source_tree / f"{name}-{version}", vdir / "source"):
        real = s.paths.in_root(candidate) if candidate.is_symlink() else candidate
        if (real / "dkms.conf").is_file():
            return candidate if candidate.parent == s.paths.source_tree else real
    return None


class _ModuleTrees:
    """Each kernel's module files by file name, from one walk of /lib/modules/KVER (but
    build/ and source/), made when a kernel is first asked about."""

    def __init__(self, modules_dir: Path):
        self.modules_dir = modules_dir
        self._by_kver: dict[str, dict[str, list[Path]]] = {}

    def named(self, kver: str, filename: str) -> list[Path]:
        if kver not in self._by_kver:
            kdir = self.modules_dir / kver
            index: dict[str, list[Path]] = {}
            for dirpath, dirnames, filenames in os.walk(kdir):
                if dirpath == str(kdir):
                    dirnames[:] = [d for d in dirnames if d not in ("build", "source")]
                for fn in filenames:
                    index.setdefault(fn, []).append(Path(dirpath) / fn)
            self._by_kver[kver] = index
        return self._by_kver[kver].get(filename, [])


def _find_installed(trees: _ModuleTrees, b: BuildPlan) -> None:
    """Where DKMS put each built module: the file of that name in /lib/modules/KVER with
    the same content (DKMS copies the built file as is)."""
    kdir = trees.modules_dir / b.kver
    for m in b.modules:
        want = digest.file(m)
        same = next(
            (p for p in sorted(trees.named(b.kver, m.name)) if digest.file(p) == want), None
        )
        if same is not None:
            b.installed[m.name] = str(same.relative_to(kdir))
    b.missing = sorted(m.name for m in b.modules if m.name not in b.installed)


def adopt_key(s: Session) -> str | None:
    """DKMS's signing pair becomes extmod's default one when extmod has none yet: its
    certificate is the one enrolled as a MOK, so modules extmod builds later still load
    under Secure Boot."""
    key, cert = s.paths.dkms_records / "mok.key", s.paths.dkms_records / "mok.pub"
    if s.config.sign_key or s.config.sign_cert or not (key.is_file() and cert.is_file()):
        return None
    return signing.adopt_key_pair(key, cert, signing.keys_dir(s.paths))


def apply(s: Session, plans: list[PackagePlan], keep_dkms: bool) -> None:
    """Record every plan in extmod's state; then move DKMS's records aside (unless
    ``keep_dkms``). A package that cannot be taken over is reported and left to DKMS."""
    note = adopt_key(s)
    if note:
        s.note(note)
    done: dict[Path, bool] = {}
    kernels = {k.release: k for k in kernel.usable(s.paths)}
    for p in plans:
        ok = p.problem is None
        if ok:
            try:
                _take_over(s, p, kernels)
            except ExtmodError as e:
                p.problem = str(e)
                ok = False
        if not ok:
            left = "left to DKMS" if p.record is not None else "not registered"
            s.failed(p.ident, "", UserError(f"{p.ident} not imported: {p.problem} ({left})"))
        if p.record is not None:
            done[p.record] = done.get(p.record, True) and ok
    if keep_dkms:
        return
    for record, ok in done.items():
        if ok:
            dest = s.paths.dkms_imported(record.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                shutil.rmtree(dest)
            shutil.move(record, dest)
            s.note(
                f"DKMS's record {record} moved to {dest} (move it back to hand "
                f"{record.name} back to DKMS)"
            )


def _take_over(s: Session, p: PackagePlan, kernels: dict[str, kernel.Kernel]) -> None:
    assert p.source is not None
    with s.state.lock("packages", s.say):
        added, new = s.state.add(p.name, p.version, p.source.absolute())
    if new:
        s.record(Outcome(added.ident, "", "imported: added"))
    for b in p.builds:
        with s.pair_lock(p.name, b.kver):
            if s.state.find_built(p.name, p.version, b.kver, b.arch) is None:
                record_build(s, added, b, kernels.get(b.kver))
            built = s.state.find_built(p.name, p.version, b.kver, b.arch)
            assert built is not None
            if b.installed and s.state.find_installed(b.kver, b.arch, p.name) is None:
                with s.kernel_lock(b.kver):
                    s.state.write_installed(
                        Installed(
                            p.name,
                            p.version,
                            b.kver,
                            b.arch,
                            tuple(
                                InstalledFile(
                                    path=b.installed[m.file],
                                    sha256=m.sha256,
                                    original=_adopt_original(s, p, b, m),
                                    shadows=(),
                                )
                                for m in built.modules
                                if m.file in b.installed
                            ),
                            (),
                        )
                    )
                s.record(
                    Outcome(
                        added.ident,
                        b.kver,
                        "imported: installed",
                        f"{len(b.installed)} modules, not rebuilt",
                    )
                )
            else:
                s.record(
                    Outcome(added.ident, b.kver, "imported: built", f"{len(b.modules)} modules")
                )
            for m in b.missing:
                s.note(
                    f"{added.ident} for {b.kver}: DKMS says {m} is installed, but no "
                    f"file of that name and content is in {s.paths.modules_dir / b.kver}: "
                    f"recorded as built only"
                )


def _adopt_original(s: Session, p: PackagePlan, b: BuildPlan, m: BuiltModule) -> str | None:
    """The in-tree module DKMS moved aside for this one (original_module/KVER/ARCH/, kept on
    distributions other than Debian and Ubuntu), copied to extmod's originals; DKMS puts it
    back at DEST_MODULE_LOCATION on uninstall, and so will extmod."""
    if p.record is None:
        return None
    saved = p.record / "original_module" / b.kver / b.arch
    found = (
        [
            f
            for f in saved.iterdir()
            if f.is_file() and f.name.endswith(_KO) and _stem(f.name) == m.dest_name
        ]
        if saved.is_dir()
        else []
    )
    if not found:
        return None
    rel = str(Path(m.dest_location.strip("/")) / found[0].name)
    dest = s.state.originals_dir(b.kver, b.arch, p.name) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic.copy_file(found[0], dest)
    if (saved / "collisions").is_dir():
        s.note(f"{p.ident} for {b.kver}: DKMS's collisions/ of {saved} stay in its record")
    return rel


def _copy_modules(
    b: BuildPlan, by_file: dict[str, tuple[str, str, str]], tmp: Path
) -> list[BuiltModule]:
    """DKMS's built modules into ``tmp/module``; names and places from dkms.conf when it
    was read for the kernel, else from where DKMS installed them."""
    records = []
    for f in b.modules:
        stem = _stem(f.name)
        location = (
            "/" + str(Path(b.installed[f.name]).parent)
            if f.name in b.installed
            else "/updates/dkms"
        )
        built_name, dest_name, dest_location = by_file.get(f.name, (stem, stem, location))
        (tmp / "module").mkdir(exist_ok=True)
        shutil.copyfile(f, tmp / "module" / f.name)
        records.append(
            BuiltModule(
                built_name=built_name,
                dest_name=dest_name,
                dest_location=dest_location,
                file=f.name,
                sha256=digest.file(f),
            )
        )
    return records


def record_build(s: Session, added: Added, b: BuildPlan, k: kernel.Kernel | None) -> None:
    """A build record for DKMS's modules, with the inputs a build now would have (when the
    kernel's tree is here), so that an unchanged package is not rebuilt."""
    by_file: dict[str, tuple[str, str, str]] = {}
    inputs = identity = None
    if k is not None and k.arch == b.arch:
        pkg = s.facts.load(added, k)
        inputs, identity = s.facts.inputs(added, k, pkg), k.identity()
        by_file = {
            f.name: (m.built_name, m.dest_name, m.dest_location)
            for m in pkg.modules
            for f in b.modules
            if _stem(f.name) == m.dest_name
        }
    final = s.state.finished_dir(added.name, added.version, b.kver, b.arch)
    tmp = atomic.new_dir_beside(final)
    exports = _exports(b.modules, tmp)
    if exports is None:
        s.note(
            f"{added.ident} for {b.kver}: zstd-compressed modules: their exported "
            f"symbols are not recorded (a BUILD_DEPENDS user may fail its load check "
            f"until extmod rebuilds {added.name})"
        )
    records = _copy_modules(b, by_file, tmp)
    log = b.modules[0].parent.parent / "log" / "make.log"  # KVER/ARCH/log/
    if log.is_file():
        shutil.copyfile(log, tmp / "make.log")
    record = BuildRecord(
        name=added.name,
        version=added.version,
        kernel=b.kver,
        arch=b.arch,
        built=state.now(),
        modules=tuple(records),
        kernel_tree=str(k.build_dir) if k else None,
        kernel_identity=identity,
        inputs=inputs,
        exports=tuple(sorted(exports or ())),
        imported_from=str(b.modules[-1].parent),
    )
    atomic.write_json(tmp / "build.json", record.to_json())
    s.state.publish_built(tmp, added.name, added.version, b.kver, b.arch)


def _exports(modules: list[Path], scratch: Path) -> set[str] | None:
    """The symbols DKMS's modules export (what a BUILD_DEPENDS package may use), read as
    the load check reads a fresh build; .xz and .gz are unpacked into ``scratch`` first."""
    out: set[str] = set()
    for f in modules:
        if f.suffix == ".ko":
            out |= loadcheck.read(f).exported
            continue
        if f.suffix == ".xz":
            data = lzma.decompress(f.read_bytes())
        elif f.suffix == ".gz":
            data = gzip.decompress(f.read_bytes())
        else:
            return None
        plain = scratch / f"{f.stem}.extmod-tmp.ko"
        plain.write_bytes(data)
        out |= loadcheck.read(plain).exported
        plain.unlink()
    return out


def _stem(filename: str) -> str:
    stem = module_stem(filename)
    assert stem is not None, filename  # only module files get here
    return stem
