"""Release-free paths for a build, so a compile cache hits across kernels.

ccache and sccache key a compile on its command line and its preprocessed text, and both
carry absolute paths: the kernel's trees (/usr/src/linux-headers-6.1.0-56-amd64, its
-common twin, /lib/modules/KVER/build) and the build dir extmod keeps per (package,
kernel). Each names the release, so a unit built again for the next ABI misses even when
no header it reads changed. ccache's base_dir cannot help: it makes paths relative, and the
relative path still names the release.

So, with a launcher set, a root build runs in its private mount namespace with a view
(run.View): a tmpfs at <state dir>/view holding

    view/kernel/build    the kernel's build tree: each top-level entry bound read-only
                         (links such as Debian's scripts -> ../../lib/linux-kbuild-6.1
                         bound at their target), and Debian's one-line Makefile stub
                         replaced by one that includes view/kernel/source/Makefile
    view/kernel/source   the source tree beside it (Debian's -common), when there is one
    view/dkms            the (package, kernel)'s $dkms_tree, read-write

DKMS's ``$kernel_source_dir`` and ``$dkms_tree`` name these paths, dkms.conf is evaluated
in the view too (zfs tests ``${kernel_source_dir/%build/source}`` while it is read), and the
steps start in view/dkms/NAME/VERSION/build. Nothing is written outside the namespace but
the empty mount point (the stub lives in the view's tmpfs, which is read-only once made).
Error lines and the reproducer are said with the real paths (run.View.to_real).
"""

from __future__ import annotations

import os
from pathlib import Path

from extmod.core import run
from extmod.core.config import Config
from extmod.core.paths import Paths
from extmod.kernel.kernel import Kernel
from extmod.source.context import view_dkms_tree, view_kernel_build


def view_root(paths: Paths) -> Path:
    return paths.view_root


def why_not(config: Config, user: run.RunAs | None) -> str | None:
    """None when a build maps its paths, else why not (no launcher is no reason to say)."""
    if not config.build_launcher or config.build_map_paths == "off":
        return "off"
    if user is not None:
        return "a --build-user build cannot make a mount namespace"
    if os.geteuid() != 0:
        return "only root makes mount namespaces"
    return run.readonly_supported()


def view(
    kernel: Kernel, paths: Paths, config: Config, name: str, version: str, user: run.RunAs | None
) -> run.View | None:
    """The view for one (package, kernel) build, or None when its paths are not mapped."""
    if why_not(config, user) is not None:
        return None
    root = view_root(paths)
    build = view_kernel_build(root)
    source = kernel.split_source
    files: tuple[tuple[Path, str], ...] = ()
    if kernel.makefile_include is not None and source is not None:
        # Debian's stub, written in the view's tmpfs instead of bound
        files = ((build / "Makefile", f"include {build.parent / 'source' / 'Makefile'}\n"),)
    binds = _mirror(kernel.build_dir, build, skip="Makefile" if files else None)
    shows = [(build, kernel.source_dir_as_named)]
    if source is not None:
        binds += _mirror(source, build.parent / "source")
        shows.append((build.parent / "source", source))
    real_tree = paths.dkms_tree(name, version, kernel.release)
    binds.append((real_tree, view_dkms_tree(root), False))  # made by the namespace if missing
    shows.append((view_dkms_tree(root), real_tree))
    cwd = view_dkms_tree(root) / name / version / "build"
    return run.View(root, tuple(binds), files, cwd=cwd, shows=tuple(shows))


def _mirror(tree: Path, where: Path, skip: str | None = None) -> list[tuple[Path, Path, bool]]:
    """Read-only binds that show ``tree`` at ``where``: the whole tree at once when it has
    no top-level link and nothing is left out, else entry by entry (a link at its target;
    ``skip``: an entry the view writes itself)."""
    entries = sorted(tree.iterdir())
    if skip is None and not any(e.is_symlink() for e in entries):
        return [(tree.resolve(), where, True)]
    return [
        (e.resolve(), where / e.name, True)
        for e in entries
        if e.name != skip and e.exists()  # a dangling link shows as nothing, as it reads
    ]
