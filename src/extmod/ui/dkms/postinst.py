"""``/usr/lib/dkms/common.postinst``: what every ``*-dkms`` package's postinst runs."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from extmod.core import paths, run
from extmod.core.errors import (
    ExtmodError,
)
from extmod.kernel import kernel
from extmod.kernel.kernel import Kernel
from extmod.ops import commands, installer, plan, session
from extmod.ops.session import Added
from extmod.source import package
from extmod.ui.dkms import add as dkmsadd
from extmod.ui.dkms.args import Args, DkmsExit
from extmod.ui.dkms.front import Front


def postinst(fr: Front, tarball_root: str, arch: str) -> int:
    """common.postinst's work (see ``common_postinst``), in the bracket of every verb."""
    s = fr.new_session(words=False)
    depmod: list[str] = []
    try:
        return commands.bracket(
            s, "common.postinst", lambda: _postinst(fr, s, tarball_root, arch), depmod
        )
    finally:
        for kver in depmod:
            fr.say(f"depmod {kver}")


def _postinst(fr: Front, s: session.Session, tarball_root: str, arch: str) -> int:
    name, version = fr.a.module, fr.a.version
    if not _register_for_postinst(fr, s, tarball_root):
        return 2
    added = fr.added_or_die(s, name, version)
    kernels = [k for k in kernel.usable(fr.paths) if not arch or k.arch == arch]
    if not kernels:
        print(
            f"{name}/{version} is added; no kernel here has headers "
            f"({fr.paths.kernels_dir}/KVER/build): it is built when they are "
            f"installed"
        )
        return 0
    print(f"Building for {', '.join(k.release for k in kernels)}")
    pairs = _postinst_pairs(fr, s, added, kernels)
    plan.run_pairs(s, pairs, lambda a, k, p: installer.install_pair(s, a, k, p))
    plan.dependants(s, name, kernels)
    _postinst_report(fr, s)
    return 0


def _register_for_postinst(fr: Front, s: session.Session, tarball_root: str) -> bool:
    """From the package's tarball, else from /usr/src; False: the tarball is bad."""
    name, version = fr.a.module, fr.a.version
    tarball = Path(tarball_root or "/nonexistent") / f"{name}-{version}.dkms.tar.gz"
    if tarball.is_file():
        fr.a.values["archive"] = str(tarball)
        fr.a.flags.add("force")  # the package's own tarball replaces what was loaded
        try:
            dkmsadd.do_ldtarball(fr, s)
        except DkmsExit as e:
            print(f"Unable to load DKMS tarball {tarball}: {' '.join(e.lines)}")
            return False
        fr.a.flags.discard("force")
    elif (fr.paths.source_tree / f"{name}-{version}").is_dir():
        if s.state.find_added(name, version) is None:
            print(f"Loading new {name}-{version} DKMS files...")
            dkmsadd.add_named(fr, s, name, version)
    else:
        raise DkmsExit(
            2, f"neither {tarball} nor {fr.paths.source_tree / f'{name}-{version}'} exists"
        )
    return True


def _postinst_pairs(
    fr: Front, s: session.Session, added: Added, kernels: list[Kernel]
) -> list[tuple[Added, Kernel, package.Package | None]]:
    """The kernels to build for: not those BUILD_EXCLUSIVE rules out, nor, for a
    binaries-only package, those it brought no modules for (each said)."""
    pairs: list[tuple[Added, Kernel, package.Package | None]] = []
    for k in kernels:
        try:
            pkg = s.facts.load(added, k)
        except ExtmodError as e:
            s.failed(added.ident, k.release, e)
            continue
        if pkg.excluded:
            print(f"{added.ident} for {k.release}: skipped ({pkg.excluded})")
        elif fr.sourceless(added) and not s.state.find_built(
            added.name, added.version, k.release, k.arch
        ):
            print(
                f"{added.ident} for {k.release}: skipped (a binaries-only package with "
                f"no modules for this kernel: it cannot be built here)"
            )
        else:
            pairs.append((added, k, pkg))
    return pairs


def _postinst_report(fr: Front, s: session.Session) -> None:
    name, version = fr.a.module, fr.a.version
    for o in s.outcomes:
        if o.kver and o.action == "failed":
            print(f"{o.ident} for {o.kver}: NOT installed: {o.detail}")
        elif o.kver:
            detail = f" ({o.detail})" if o.detail else ""
            print(f"{o.ident} for {o.kver}: {o.action}{detail}")
    if any(o.exit_code for o in s.outcomes):
        # the log only when a failure named one (issue 22: a full disk names none)
        log = " and the log named above" if any("(log: " in o.detail for o in s.outcomes) else ""
        print(
            f"{name}/{version}: the package stays configured; see 'dkms status -m "
            f"{name}'{log}, then 'dkms install -m {name} -v "
            f"{version} -k KVER' once the cause is fixed"
        )


# -- /usr/lib/dkms/common.postinst ---------------------------------------------------------
def common_postinst(argv: Sequence[str]) -> int:
    """What every ``*-dkms`` package's postinst runs (dh_dkms:
    ``common.postinst NAME VERSION TARBALL_ROOT ARCH UPGRADE``): register the package from
    its prebuilt tarball or from /usr/src/NAME-VERSION, then build and install it for
    every kernel here that has headers, as one graph under one job budget (DKMS builds for
    the running and the newest kernel only). A build that fails is reported with its
    first error and log, and the package stays configured (exit 0), as extmod's kernel
    hooks do: apt goes on, and ``dkms status``/``extmod status`` show what is missing."""
    name, version, tarball_root, arch = (list(argv) + [""] * 4)[:4]
    if not name or not version:
        print("Need NAME, and VERSION defined\nARCH is optional")
        return 1
    root = paths.root_of(os.environ) or Path("/")
    if (root / "etc/dkms/no-autoinstall").exists():
        print("autoinstall for dkms modules has been disabled.")
        return 0
    a = Args(module=name, version=version)
    try:
        with run.children_end_with_us():
            return postinst(Front(a), tarball_root, _machine_arch(arch))
    except DkmsExit as e:
        print("Error! " + "\n".join(e.lines), file=sys.stderr)
        return e.code
    except ExtmodError as e:
        print(f"Error! {e}", file=sys.stderr)
        return 1


def _machine_arch(deb_arch: str) -> str:
    """The kernel arch of a Debian architecture name (Ubuntu's postinst passes amd64)."""
    return {
        "amd64": "x86_64",
        "i386": "i686",
        "arm64": "aarch64",
        "armhf": "arm",
        "ppc64el": "ppc64le",
    }.get(deb_arch, deb_arch)
