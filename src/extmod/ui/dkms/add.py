"""``dkms add``, ``mktarball`` and ``ldtarball``: registering a package from a source dir,
/usr/src or a DKMS tarball (with or without sources, with prebuilt modules)."""

from __future__ import annotations

from pathlib import Path

from extmod.core.errors import (
    UserError,
)
from extmod.ops import commands, registry, session, tarball
from extmod.ops.session import Added
from extmod.source import package
from extmod.ui.dkms import confwords
from extmod.ui.dkms import words as dkmswords
from extmod.ui.dkms.args import DkmsExit
from extmod.ui.dkms.front import Front


def resolve(fr: Front, s: session.Session, action: str) -> Added:
    """The package of build, install, mktarball: from -m/-v, or a source dir named
    on the command line (added first, as dkms's add_source_tree does); build and
    install add /usr/src/NAME-VERSION when it is not added yet (prepare_build)."""
    if fr.a.source_dir and not fr.a.module:
        whole = {a.ident for a in s.state.all_added() if a.source.is_dir()}
        added = add_source(fr, s)
        if added.ident not in whole:
            fr.out("")  # dkms's prepare_build, after the add it did
        return added
    if fr.a.module and not fr.a.version:
        versions = s.state.versions_of(fr.a.module)
        if len(versions) == 1:  # newer dkms picks the only one; 3.0.10 asks
            return versions[0]
    name, version = fr.need_module_version(action)
    found = s.state.find_added(name, version)
    if found is not None:
        return found
    added = add_named(fr, s, name, version)
    fr.out("")  # dkms's prepare_build, after the add it did
    return added


def _ident(fr: Front, name: str, version: str) -> str:
    return f"{name}/{version}" if fr.since("3.1") else f"{name}-{version}"


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
            f"DKMS tree already contains: {_ident(fr, name, version)}",
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
    conf = src / "dkms.conf"
    try:
        added = registry.add(s, f"{name}/{version}")
    except UserError as e:
        raise confwords.bad_conf(fr, s, conf, e, conf) from None
    confwords.say_notices(fr, s, conf, conf)
    dkmswords.added_link(fr, s, added, src)
    return added


def add_source(fr: Front, s: session.Session, fail_if_added: bool = False) -> Added:
    src = Path(fr.a.source_dir).absolute()
    _conf_allowed(fr, src)
    conf = src / "dkms.conf"
    try:
        name, version = package.identify(conf, registry.context(s))
    except UserError as e:
        if fr.since("3.1"):  # dkms 3.2.2 add_source_tree: read_conf_or_die
            raise confwords.bad_conf(fr, s, conf, e, conf) from None
        raise DkmsExit(10, "Malformed dkms.conf file. Cannot load source tree.", str(e)) from None
    found = s.state.find_added(name, version)
    if found is not None and found.source.is_dir():
        if fail_if_added:
            raise DkmsExit(
                3,
                f"DKMS tree already contains: {_ident(fr, name, version)}",
                "You cannot add the same module/version combo more than once.",
            )
        return found
    if "force" in fr.a.flags and commands.replace_copy(s, name, version, src):
        fr.out(f"Forcing install of {name}-{version}")
    copy = fr.paths.source_tree / f"{name}-{version}"
    try:
        added = registry.add(s, str(src))
    except UserError as e:
        raise confwords.bad_conf(fr, s, conf, e, conf, copy / "dkms.conf") from None
    confwords.say_notices(fr, s, conf, copy / "dkms.conf")
    dkmswords.added_link(fr, s, added, copy)
    return added


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
    archive = fr.a.opt("archive")
    target = (Path(archive) if archive else tarball.default_name(s, added, pairs)).absolute()
    try:
        tarball.make(s, added, pairs, "binaries_only" in fr.a.flags, target)
    except tarball.NotBuiltError as e:
        raise DkmsExit(
            6, str(e), "Modules must already be in the built state before using mktarball."
        ) from None
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
    try:
        with tarball.unpacked(archive) as (tmp, conf_dir):
            return _load(fr, s, tmp, conf_dir)
    except tarball.NotATarballError as e:
        lines = [str(e)]
        if "dkms_source_tree" in str(e):
            lines.append(f"{archive} is not a valid DKMS tarball.")
        raise DkmsExit(7, *lines) from None


def _load(fr: Front, s: session.Session, tmp: Path, conf_dir: Path | None) -> int:
    if conf_dir is None:
        raise DkmsExit(
            3,
            "Tarball does not appear to be a correctly formed DKMS "
            "archive. No dkms.conf found within it.",
        )
    if conf_dir.name not in ("dkms_source_tree", "dkms_binaries_only"):
        fr.a.source_dir = str(conf_dir)  # a plain source tarball
        add_source(fr, s)
        return 0
    name, version = package.identify(conf_dir / "dkms.conf", registry.context(s))
    if s.state.find_added(name, version) is not None and "force" not in fr.a.flags:
        raise DkmsExit(8, f"{name}-{version} is already added!", "Aborting.")
    fr.out(f"Loading tarball for {name}-{version}")
    if conf_dir.name == "dkms_source_tree":
        fr.a.source_dir = str(conf_dir)
        added = add_source(fr, s)
    else:
        added = tarball.register_binaries_only(s, name, version, conf_dir)
    force = "force" in fr.a.flags
    for got in tarball.load_prebuilt(s, added, tmp / "dkms_main_tree", force):
        where = f"{got.kver} ({got.arch})"
        if got.modules:
            fr.out(f"Loading {added.ident} for {where}: {got.modules} modules")
        else:
            fr.say(f"Warning: {added.ident} for {where} is already built. Skipping...")
    return 0
