"""A bare kbuild dir (no dkms.conf) as the package DKMS would make of it: its name, the
check that it is a kbuild external module, its made-up version."""

from __future__ import annotations

import re
from pathlib import Path

from extmod.builder import pathmap
from extmod.core.config import Config
from extmod.core.errors import UserError
from extmod.core.paths import Paths
from extmod.kernel.kernel import Kernel
from extmod.source import context, package

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


_OBJ_M = re.compile(r"^\s*obj-(?:m|\$\([A-Z0-9_]+\))\s*[:+]?=", re.M)


def package_name(src: Path, name: str | None) -> str:
    chosen = name or src.resolve().name
    if not _NAME.match(chosen):
        raise UserError(
            f"{src}: package name {chosen!r} is not a valid name "
            f"(letters, digits, '_.+-'; give one with --name)"
        )
    return chosen


def check_source(src: Path) -> None:
    if not src.is_dir():
        raise UserError(f"{src}: source dir does not exist")
    files = [src / n for n in ("Kbuild", "Makefile") if (src / n).is_file()]
    if not files:
        raise UserError(f"{src}: neither Kbuild nor Makefile found")
    for f in files:
        try:
            if _OBJ_M.search(f.read_text(encoding="utf-8", errors="replace")):
                return
        except OSError as e:
            raise UserError(f"{f}: cannot read: {e.strerror}") from None
    raise UserError(f"{files[0]}: no obj-m line: not a kbuild external module")


ADHOC = "_adhoc"  # the version of a made-up package (a bare kbuild dir, no dkms.conf)


def adhoc_package(
    src: Path, name: str, kernel: Kernel, paths: Paths, config: Config
) -> package.Package:
    """A bare kbuild dir as the package DKMS would make of it: DKMS's default MAKE (with
    kbuild's ``modules`` target) and CLEAN, no scripts, and every module make leaves
    (``modules`` is filled in after MAKE: a bare dir lists none)."""
    check_source(src)
    view = pathmap.view(kernel, paths, config, name, ADHOC, None)
    if view is not None:
        kdir, dkms_tree = context.view_kernel_build(view.root), context.view_dkms_tree(view.root)
    else:
        kdir, dkms_tree = kernel.build_dir, paths.dkms_tree(name, ADHOC, kernel.release)
    make = f"make -C {kdir} M={dkms_tree}/{name}/{ADHOC}/build"
    return package.Package(
        name=name,
        version=ADHOC,
        source=src,
        conf_files=(),
        modules=(),
        make=f"{make} modules",
        clean=f"{make} clean",
        patches=(),
        pre_build="",
        post_build="",
        post_add="",
        pre_install="",
        post_install="",
        post_remove="",
        autoinstall=False,
        build_depends=(),
        no_weak_modules=False,
        excluded=None,
    )
