"""The context a dkms.conf is evaluated in: the kernel as a dkms.conf sees it (``ConfKernel``)
and where DKMS's variables lead (``Context``: ``$dkms_tree``, ``$source_tree``,
``$install_tree``…), for every caller that reads a dkms.conf (registering a package,
building it, its scripts). In a build's path view (builder/pathmap.py), the view's own
paths for the kernel tree and ``$dkms_tree``, which are named here."""

from __future__ import annotations

from pathlib import Path

from extmod.core import run
from extmod.core.config import Config
from extmod.core.paths import Paths
from extmod.kernel.kernel import Kernel
from extmod.source.package import ConfKernel, Context
from extmod.source.rules import version_tuple


def view_kernel_build(root: Path) -> Path:
    """``$kernel_source_dir`` in the view at ``root``."""
    return root / "kernel" / "build"


def view_dkms_tree(root: Path) -> Path:
    """``$dkms_tree`` in the view at ``root``."""
    return root / "dkms"


def conf_kernel(kernel: Kernel, view: run.View | None = None) -> ConfKernel:
    """The kernel as a dkms.conf sees it; in a ``view`` (pathmap), at the view's path."""
    return ConfKernel(
        kver=kernel.release,
        arch=kernel.arch,
        kernel_source_dir=view_kernel_build(view.root) if view else kernel.source_dir_as_named,
        kernel_config=dict(kernel.config),
        version=version_tuple(kernel.release),
        readonly=kernel.source_trees,
    )


NO_KERNEL = ConfKernel(
    kver="", arch="", kernel_source_dir=Path("/nonexistent"), kernel_config={}, version=()
)  # dkms.conf read for no kernel (add, when no kernel is here)


def dkms_context(
    paths: Paths,
    config: Config,
    name: str | None = None,
    version: str | None = None,
    kver: str | None = None,
    user: run.RunAs | None = None,
    view: run.View | None = None,
) -> Context:
    """The context DKMS's variables are made from (package.shell_vars), the one place:
    ``$dkms_tree`` is the (package, kernel)'s own (Paths.dkms_tree), the package's dir of
    them without a kernel, and a scratch dir while the package is not yet known. In a
    ``view`` (pathmap), the view's path for it."""
    if view is not None:
        dkms_tree = view_dkms_tree(view.root)
    elif name is None or version is None:
        dkms_tree = paths.identify_tree
    else:
        dkms_tree = paths.dkms_tree(name, version, kver)
    return Context(
        dkms_tree=dkms_tree,
        source_tree=paths.source_tree,
        install_tree=paths.modules_dir,
        etc_dkms=paths.etc_dkms,
        user=user,
        jobs=config.build_jobs,
        timeout=config.build_dkms_conf_timeout,
        view=view,
    )
