"""DKMS's tarballs (``dkms mktarball``, ``dkms ldtarball``; dkms 3.2.2 make_tarball and
load_tarball): a package's source (or only its dkms.conf: binaries-only) and its built
modules per kernel, in DKMS's layout (``dkms_source_tree/``, ``dkms_binaries_only/``,
``dkms_main_tree/KVER/ARCH/module/``). Made from and loaded into extmod's state tree; the
``dkms`` front says what happened in DKMS's words."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from extmod.core import atomic, files
from extmod.core.errors import UserError
from extmod.kernel import kernel
from extmod.kernel.finish import MODULE_SUFFIXES
from extmod.ops import migrate
from extmod.ops.session import Added, Session


class NotBuiltError(UserError):
    """mktarball of a kernel the package is not built for."""

    def __init__(self, kver: str, arch: str):
        super().__init__(f"No modules built for {kver} ({arch}).")
        self.kver, self.arch = kver, arch


def make(
    s: Session, added: Added, pairs: list[tuple[str, str]], binaries_only: bool, target: Path
) -> Path:
    """The tarball of ``added`` with its builds for ``pairs``, written whole to ``target``
    (an OSError when it cannot be)."""
    with tempfile.TemporaryDirectory(prefix="dkms-extmod-") as tmp_name:
        tmp = Path(tmp_name)
        for kver, arch in pairs:
            built = s.state.find_built(added.name, added.version, kver, arch)
            if built is None:
                raise NotBuiltError(kver, arch)
            dest = tmp / "dkms_main_tree" / kver / arch
            (dest / "module").mkdir(parents=True)
            for m in built.modules:
                shutil.copyfile(built.dir / "module" / m.file, dest / "module" / m.file)
            if (built.dir / "make.log").is_file():
                (dest / "log").mkdir()
                shutil.copyfile(built.dir / "make.log", dest / "log" / "make.log")
        if binaries_only:
            b = tmp / "dkms_binaries_only"
            b.mkdir()
            (b / "PACKAGE_NAME").write_text(added.name + "\n")
            (b / "PACKAGE_VERSION").write_text(added.version + "\n")
            shutil.copyfile(added.source / "dkms.conf", b / "dkms.conf")
        else:
            shutil.copytree(added.source, tmp / "dkms_source_tree", symlinks=True)

        def fill(f: BinaryIO, source: Path = tmp) -> None:
            with tarfile.open(fileobj=f, mode="w:gz") as tar:
                tar.add(source, arcname=".")

        atomic.write_stream(target, fill)
    return target


def default_name(s: Session, added: Added, pairs: list[tuple[str, str]]) -> Path:
    """Where DKMS puts a tarball no --archive names: the package's dir, named by kernels."""
    label = "-".join(f"kernel{kver}-{arch}" for kver, arch in pairs) or "source-only"
    if len(label) > 200:
        label = "manykernels"
    return (
        s.state.package_dir(added.name, added.version)
        / "tarball"
        / f"{added.name}-{added.version}-{label}.dkms.tar.gz"
    )


class NotATarballError(UserError):
    """An archive that is not a DKMS tarball (``loose``: it holds a dkms.conf elsewhere)."""


@contextmanager
def unpacked(archive: Path) -> Iterator[tuple[Path, Path | None]]:
    """The archive unpacked (``unpack``) into a scratch dir removed afterwards: that dir
    and the dir of its dkms.conf."""
    with tempfile.TemporaryDirectory(prefix="dkms-extmod-") as tmp_name:
        tmp = Path(tmp_name)
        yield tmp, unpack(archive, tmp)


def unpack(archive: Path, dest: Path) -> Path | None:
    """The archive unpacked into ``dest`` (tar's data filter: nothing leaves it); the dir
    of its dkms.conf: dkms_source_tree/ or dkms_binaries_only/, else (a plain source
    tarball, no dkms_main_tree/) the first dir that holds one, or None when none does.
    A tarball that cannot be read, or a DKMS layout without a dkms.conf, is a
    NotATarballError."""
    try:
        with tarfile.open(archive) as tar:
            files.unpack(tar, dest)
    except (tarfile.TarError, OSError) as e:
        raise NotATarballError(f"{archive} is not a valid DKMS tarball: {e}") from None
    for kind in ("dkms_source_tree", "dkms_binaries_only"):
        if (dest / kind / "dkms.conf").is_file():
            return dest / kind
    if (dest / "dkms_main_tree").is_dir():
        raise NotATarballError("No valid dkms.conf in dkms_source_tree or dkms_binaries_only.")
    found = sorted(dest.rglob("dkms.conf"))
    return found[0].parent if found else None


def register_binaries_only(s: Session, name: str, version: str, conf_dir: Path) -> Added:
    """A package shipped without source: its dkms.conf, kept in the state tree, is what
    it is registered from (STATE/binaries-only/NAME-VERSION/; DKMS keeps it as
    $dkms_tree/N/V/source/dkms.conf). Removing the package removes it (registry)."""
    src = s.paths.source_tree / f"{name}-{version}"
    if not src.is_dir():
        src = s.paths.binaries_only / f"{name}-{version}"
        src.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(conf_dir / "dkms.conf", src / "dkms.conf")
    with s.state.lock("packages", s.say):
        added, _ = s.state.add(name, version, src)
    return added


@dataclass(frozen=True)
class Loaded:
    kver: str
    arch: str
    modules: int  # 0: skipped, already built (and not forced)


def load_prebuilt(s: Session, added: Added, main_tree: Path, force: bool) -> list[Loaded]:
    """The tarball's built modules (``dkms_main_tree/KVER/ARCH/module/``) recorded as
    builds of ``added``, as import-dkms records DKMS's own builds."""
    kernels = {k.release: k for k in kernel.usable(s.paths)}
    loaded = []
    for kdir in sorted(main_tree.iterdir()) if main_tree.is_dir() else []:
        for adir in sorted(kdir.iterdir()):
            mod_dir = adir / "module"
            # the modules only: dkms 3.1+ also keeps the build's Module.symvers there
            mods = sorted(
                f
                for f in (mod_dir.iterdir() if mod_dir.is_dir() else ())
                if f.is_file() and f.name.endswith(MODULE_SUFFIXES)
            )
            if not mods:
                continue
            if s.state.find_built(added.name, added.version, kdir.name, adir.name) and not force:
                loaded.append(Loaded(kdir.name, adir.name, 0))
                continue
            s.state.drop_built(added.name, added.version, kdir.name, adir.name)
            with s.pair_lock(added.name, kdir.name):
                plan = migrate.BuildPlan(kdir.name, adir.name, mods)
                migrate.record_build(s, added, plan, kernels.get(kdir.name))
            loaded.append(Loaded(kdir.name, adir.name, len(mods)))
    return loaded
