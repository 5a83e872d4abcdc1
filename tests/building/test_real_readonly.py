"""Issue 13.5: a build never writes in the kernel's trees, even as root and even when a
package tries. Every step (the dkms.conf evaluation, CLEAN, PRE_BUILD, MAKE, POST_BUILD)
runs in a private mount namespace where the build tree, the source tree
(/lib/modules/KVER/source: Debian's -common), the kbuild tree its links lead to, and the
tree its Makefile stub includes are read-only. Tried on Debian's headers and on the clang
ThinLTO defconfig tree: the write fails with an error naming the path, and every tree is
byte for byte as before."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, debian_source_dir, extmod, make_root, snapshot

pytestmark = pytest.mark.slow

CONF = (
    'PACKAGE_NAME="{name}"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="hello"\n'
    'DEST_MODULE_LOCATION[0]="/extra"\n'
)

# The damaging case: a MAKE over two lines whose first line alone is a bare make in
# the kernel tree (it rewrote Debian's headers' Makefile and deleted include/generated/).
BARE_MAKE = 'MAKE[0]="make -C ${kernel_source_dir}\n  && touch ${kernel_source_dir}/pwned"\n'
# A PRE_BUILD script that writes into the source tree zfs would find.
PRE_BUILD = 'PRE_BUILD="w.sh ${kernel_source_dir/%build/source}"\n'


@pytest.mark.parametrize("kind", ["gcc", "defconfig"])
@pytest.mark.parametrize("case", ["make", "pre_build"])
def test_a_build_cannot_write_in_the_kernel_tree(
    trees: dict[str, Any], tmp_path: Path, kind: str, case: str
) -> None:
    t = trees[kind]
    kver, build = t["kver"], Path(t["build"]).resolve()
    source = debian_source_dir(kver) if kind == "gcc" else str(build)
    root = make_root(tmp_path / "root", kver, str(build), source)
    protected = sorted({build, Path(source), (build / "scripts").resolve().parent})
    before = {p: snapshot(p) for p in protected}
    src = tmp_path / f"writer-{case}"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "w.sh").write_text('#!/bin/sh\nmkdir "$1/extmod-was-here"\n')
    (src / "w.sh").chmod(0o755)
    (src / "dkms.conf").write_text(
        CONF.format(name=f"writer{case}") + (BARE_MAKE if case == "make" else PRE_BUILD)
    )
    r = extmod(["--root", root, "install", src, "-k", kver])
    lines = [ln for ln in r.err.splitlines() if ln.startswith("extmod: error:")]
    assert r.rc == 6 and len(lines) == 1, r.err
    assert "it tried to write in the kernel's tree, which builds may only read: " in lines[0]
    # The path as the package named it: make's cwd (the tree), or the source link.
    named = f"/lib/modules/{kver}/source/extmod-was-here" if case == "pre_build" else f"{build}/"
    assert named in lines[0], lines[0]
    assert "Read-only file system" in lines[0]
    for p in protected:
        assert snapshot(p) == before[p], f"{p} changed"
    assert not list((root / "lib/modules" / kver).rglob("*.ko"))
