"""``dkms add``, ``mktarball`` and ``ldtarball``: registering a package from a source dir,
/usr/src or a DKMS tarball (with or without sources, with prebuilt modules)."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO

from extmod.core import atomic
from extmod.core.errors import (
    UserError,
)
from extmod.kernel import kernel
from extmod.kernel.finish import MODULE_SUFFIXES
from extmod.ops import migrate, registry, session
from extmod.ops.session import Added
from extmod.source import package
from extmod.ui.dkms.args import DkmsExit
from extmod.ui.dkms.front import Front


def resolve(fr: Front, s: session.Session, action: str) -> Added:
    """The package of build, install, mktarball: from -m/-v, or a source dir named
    on the command line (added first, as dkms's add_source_tree does); build and
    install add /usr/src/NAME-VERSION when it is not added yet (prepare_build)."""
    if fr.a.source_dir and not fr.a.module:
        return add_source(fr, s)
    if fr.a.module and not fr.a.version:
        versions = s.state.versions_of(fr.a.module)
        if len(versions) == 1:  # newer dkms picks the only one; 3.0.10 asks
            return versions[0]
    name, version = fr.need_module_version(action)
    found = s.state.find_added(name, version)
    return found if found is not None else add_named(fr, s, name, version)


# -- verbs ----------------------------------------------------------------------------
def do_add(fr: Front, s: session.Session) -> int:
    if "archive" in fr.a.values and not fr.a.module:
        return do_ldtarball(fr, s)
    if fr.a.source_dir and not fr.a.module:
        add_source(fr, s, fail_if_added=True)
        return 0
    name, version = fr.need_module_version("add")
    if s.state.find_added(name, version) is not None:
        raise DkmsExit(
            3,
            f"DKMS tree already contains: {name}-{version}",
            "You cannot add the same module/version combo more than once.",
        )
    add_named(fr, s, name, version)
    return 0


def add_named(fr: Front, s: session.Session, name: str, version: str) -> Added:
    src = fr.paths.source_tree / f"{name}-{version}"
    if not src.is_dir():
        raise DkmsExit(
            2, "Could not find module source directory.", f"Directory: {src} does not exist."
        )
    _conf_allowed(fr, src)
    try:
        added = registry.add(s, f"{name}/{version}")
    except UserError as e:
        raise DkmsExit(8, "Bad conf file.", str(e)) from None
    fr.out(
        f"Creating symlink to {src} for {added.ident} (extmod state "
        f"{s.state.package_dir(name, version)})"
    )
    return added


def add_source(fr: Front, s: session.Session, fail_if_added: bool = False) -> Added:
    src = Path(fr.a.source_dir).absolute()
    _conf_allowed(fr, src)
    try:
        name, version = package.identify(src / "dkms.conf", registry.context(s))
    except UserError as e:
        raise DkmsExit(10, "Malformed dkms.conf file. Cannot load source tree.", str(e)) from None
    found = s.state.find_added(name, version)
    if found is not None:
        if fail_if_added:
            raise DkmsExit(
                3,
                f"DKMS tree already contains: {name}-{version}",
                "You cannot add the same module/version combo more than once.",
            )
        return found
    dest = fr.paths.source_tree / f"{name}-{version}"
    if "force" in fr.a.flags and dest.exists() and dest.resolve() != src.resolve():
        fr.out(f"Forcing install of {name}-{version}")
        shutil.rmtree(dest)
    try:
        return registry.add(s, str(src))
    except UserError as e:
        raise DkmsExit(8, "Bad conf file.", str(e)) from None


def _conf_allowed(fr: Front, src: Path) -> None:
    conf = fr.a.opt("conf")
    if conf and Path(conf).resolve() != (src / "dkms.conf").resolve():
        raise DkmsExit(
            8,
            f"-c {conf}: extmod reads each package's own dkms.conf "
            f"({src / 'dkms.conf'}); copy the file there instead",
        )


# -- tarballs (DKMS's layout: make_tarball, load_tarball) -----------------------------
def do_mktarball(fr: Front, s: session.Session) -> int:
    name, version = fr.need_module_version("mktarball")
    added = fr.added_or_die(s, name, version)
    pairs = [] if "source_only" in fr.a.flags else fr.kernel_pairs()
    with tempfile.TemporaryDirectory(prefix="dkms-extmod-") as tmp_name:
        tmp = Path(tmp_name)
        kinds = []
        for kver, arch in pairs:
            built = s.state.find_built(name, version, kver, arch)
            if built is None:
                raise DkmsExit(
                    6,
                    f"No modules built for {kver} ({arch}).",
                    "Modules must already be in the built state before using mktarball.",
                )
            dest = tmp / "dkms_main_tree" / kver / arch
            (dest / "module").mkdir(parents=True)
            for m in built.modules:
                shutil.copyfile(built.dir / "module" / m.file, dest / "module" / m.file)
            if (built.dir / "make.log").is_file():
                (dest / "log").mkdir()
                shutil.copyfile(built.dir / "make.log", dest / "log" / "make.log")
            kinds.append(f"kernel{kver}-{arch}")
        if "binaries_only" in fr.a.flags:
            b = tmp / "dkms_binaries_only"
            b.mkdir()
            (b / "PACKAGE_NAME").write_text(name + "\n")
            (b / "PACKAGE_VERSION").write_text(version + "\n")
            shutil.copyfile(added.source / "dkms.conf", b / "dkms.conf")
        else:
            shutil.copytree(added.source, tmp / "dkms_source_tree", symlinks=True)
        label = "-".join(kinds) or "source-only"
        if len(label) > 200:
            label = "manykernels"
        target = (
            Path(fr.a.opt("archive"))
            if fr.a.opt("archive")
            else s.state.package_dir(name, version)
            / "tarball"
            / f"{name}-{version}-{label}.dkms.tar.gz"
        )
        target = target.absolute()
        try:

            def fill(f: BinaryIO, source: Path = tmp) -> None:
                with tarfile.open(fileobj=f, mode="w:gz") as tar:
                    tar.add(source, arcname=".")

            atomic.write_stream(target, fill)
        except OSError as e:
            raise DkmsExit(
                9, f"Missing write permissions for {target.parent} ({e.strerror})."
            ) from None
    fr.out(f"Tarball location: {target}")
    return 0


def do_ldtarball(fr: Front, s: session.Session) -> int:
    archive = Path(fr.a.opt("archive"))
    if not fr.a.opt("archive") or not archive.exists():
        raise DkmsExit(2, f"{archive} does not exist.")
    with tempfile.TemporaryDirectory(prefix="dkms-extmod-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise DkmsExit(7, f"{archive} is not a valid DKMS tarball: {e}") from None
        if (tmp / "dkms_source_tree/dkms.conf").is_file():
            conf_dir = tmp / "dkms_source_tree"
        elif (tmp / "dkms_binaries_only/dkms.conf").is_file():
            conf_dir = tmp / "dkms_binaries_only"
        elif not (tmp / "dkms_main_tree").is_dir():
            found = sorted(tmp.rglob("dkms.conf"))
            if not found:
                raise DkmsExit(
                    3,
                    "Tarball does not appear to be a correctly formed DKMS "
                    "archive. No dkms.conf found within it.",
                )
            fr.a.source_dir = str(found[0].parent)
            add_source(fr, s)
            return 0
        else:
            raise DkmsExit(
                7,
                "No valid dkms.conf in dkms_source_tree or dkms_binaries_only.",
                f"{archive} is not a valid DKMS tarball.",
            )
        name, version = package.identify(conf_dir / "dkms.conf", registry.context(s))
        if s.state.find_added(name, version) is not None and "force" not in fr.a.flags:
            raise DkmsExit(8, f"{name}-{version} is already added!", "Aborting.")
        fr.out(f"Loading tarball for {name}-{version}")
        if conf_dir.name == "dkms_source_tree":
            fr.a.source_dir = str(conf_dir)
            added = add_source(fr, s)
        else:
            added = _binaries_only(fr, s, name, version, conf_dir)
        _load_prebuilt(fr, s, added, tmp / "dkms_main_tree")
    return 0


def _binaries_only(fr: Front, s: session.Session, name: str, version: str, conf_dir: Path) -> Added:
    """A package shipped without source: its dkms.conf, kept in the state tree, is what
    it is registered from (STATE/binaries-only/NAME-VERSION/; DKMS keeps it as
    $dkms_tree/N/V/source/dkms.conf)."""
    src = fr.paths.source_tree / f"{name}-{version}"
    if not src.is_dir():
        src = fr.paths.binaries_only / f"{name}-{version}"
        src.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(conf_dir / "dkms.conf", src / "dkms.conf")
    with s.state.lock("packages", s.say):
        added, _ = s.state.add(name, version, src)
    return added


def _load_prebuilt(fr: Front, s: session.Session, added: Added, main_tree: Path) -> None:
    kernels = {k.release: k for k in kernel.usable(fr.paths)}
    for kdir in sorted(main_tree.iterdir()) if main_tree.is_dir() else []:
        for adir in sorted(kdir.iterdir()):
            mods = (
                # the modules only: dkms 3.1+ also keeps the build's Module.symvers there
                sorted(
                    f
                    for f in (adir / "module").iterdir()
                    if f.is_file() and f.name.endswith(MODULE_SUFFIXES)
                )
                if (adir / "module").is_dir()
                else []
            )
            if not mods:
                continue
            if (
                s.state.find_built(added.name, added.version, kdir.name, adir.name)
                and "force" not in fr.a.flags
            ):
                fr.say(
                    f"Warning: {added.ident} for {kdir.name} ({adir.name}) is "
                    f"already built. Skipping..."
                )
                continue
            s.state.drop_built(added.name, added.version, kdir.name, adir.name)
            with s.pair_lock(added.name, kdir.name):
                migrate.record_build(
                    s,
                    added,
                    migrate.BuildPlan(kdir.name, adir.name, mods),
                    kernels.get(kdir.name),
                )
            fr.out(f"Loading {added.ident} for {kdir.name} ({adir.name}): {len(mods)} modules")
