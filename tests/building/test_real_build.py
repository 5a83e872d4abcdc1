"""Real builds: Debian's gcc headers and the clang-16 ThinLTO tree, hello and two-file modules."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import copy_example, extmod, listing, snapshot

pytestmark = pytest.mark.slow


def vermagic(ko: Path) -> str:
    return subprocess.run(
        ["modinfo", "-F", "vermagic", str(ko)], capture_output=True, text=True, check=True
    ).stdout.strip()


def fake_root_with_kernel(root: Path, kver: str, tree: str) -> None:
    """ROOT/lib/modules/KVER/build leading (relatively) to a real tree, as on a system."""
    link = root / "lib/modules" / kver / "build"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(tree, link.parent))


@pytest.mark.parametrize("example", ["hello", "twofile"])
def test_gcc_headers_build(trees: dict[str, Any], tmp_path: Path, example: str) -> None:
    gcc = trees["gcc"]
    root = tmp_path / "root"
    fake_root_with_kernel(root, gcc["kver"], gcc["build"])
    src = copy_example(example, tmp_path)
    src_before = listing(src)
    tree_before = snapshot(Path(gcc["build"]))
    r = extmod(["--root", root, "--json", "build", src, "-k", gcc["kver"]])
    assert r.rc == 0, r.err
    res = r.json()
    ko = Path(res["modules"][0])
    assert ko.name == f"{example}.ko" and ko.is_relative_to(root / "var/lib/extmod/modules")
    assert vermagic(ko).startswith(gcc["kver"] + " ")
    # The reproducer and the compiler version are printed before the build.
    assert f" -C {gcc['build']} M=" in r.err and "+ cd " in r.err and "CC=gcc-12" in r.err
    assert "gcc-12 (Debian 12.2.0" in r.err
    assert "CC [M]" in Path(res["log"]).read_text()
    assert listing(src) == src_before, "the source dir was written to"
    assert snapshot(Path(gcc["build"])) == tree_before, "the kernel tree was written to"


@pytest.mark.parametrize("example", ["hello", "twofile"])
def test_thinlto_tree_build(trees: dict[str, Any], tmp_path: Path, example: str) -> None:
    thin = trees["thinlto"]
    src = copy_example(example, tmp_path)
    out = tmp_path / "out"
    before = listing(Path(thin["build"]))
    r = extmod(
        [
            "--root",
            tmp_path / "root",
            "--json",
            "build",
            src,
            "--kernel-dir",
            thin["build"],
            "-o",
            out,
        ]
    )
    assert r.rc == 0, r.err
    res = r.json()
    ko = out / f"{example}.ko"
    assert [Path(m) for m in res["modules"]] == [ko]
    assert ko.read_bytes()[:4] == b"\x7fELF", "LTO must leave a native ELF .ko, not bitcode"
    assert vermagic(ko).startswith(thin["kver"] + " ")
    assert "LLVM=-16" in res["reproducer"] and "Debian clang version 16" in r.err
    log = Path(res["log"]).read_text()
    assert "CC [M]" in log and "LD [M]" in log
    cache = Path(res["thinlto_cache_dir"])
    assert res["thinlto_cache_source"] == "default"
    assert cache.is_relative_to(tmp_path / "root/var/lib/extmod/thinlto-cache/6.1.192")
    assert any(f.name.startswith("llvmcache-") for f in cache.iterdir())
    assert listing(Path(thin["build"])) == before


def test_toolchain_reaches_the_build_without_unversioned_clang(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """The machine has clang-16 and ld.lld-16 but no plain clang: DKMS's CC=clang fails."""
    thin = trees["thinlto"]
    src = copy_example("hello", tmp_path)
    plain = subprocess.run(
        ["make", "-C", thin["build"], f"M={src}", "CC=clang", "LD=ld.lld", "modules"],
        capture_output=True,
        text=True,
    )
    assert plain.returncode != 0
    assert "Error 127" in plain.stdout + plain.stderr  # 127: the shell found no `clang`
    for p in src.iterdir():  # undo what the plain make left behind
        if p.name not in ("hello.c", "Kbuild"):
            subprocess.run(["rm", "-rf", str(p)], check=True)
    r = extmod(["--root", tmp_path / "root", "build", src, "--kernel-dir", thin["build"]])
    assert r.rc == 0, r.err


def test_kernels_lists_every_tree(trees: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "root"
    fake_root_with_kernel(root, trees["gcc"]["kver"], trees["gcc"]["build"])
    r = extmod(
        [
            "--root",
            root,
            "--json",
            "kernels",
            "--kernel-dir",
            trees["thinlto"]["build"],
            "--kernel-dir",
            trees["gen513"]["build"],
        ]
    )
    assert r.rc == 0, r.err
    rows = {row["build_dir"]: row for row in r.json()}
    gcc = rows[str(Path(trees["gcc"]["build"]).resolve())]
    assert (gcc["release"], gcc["compiler"], gcc["linker"], gcc["lto"]) == (
        trees["gcc"]["kver"],
        "gcc",
        "bfd",
        "none",
    )
    assert gcc["toolchain_installed"] == "yes" and gcc["arch"] == "x86_64"
    thin = rows[trees["thinlto"]["build"]]
    assert (thin["compiler"], thin["compiler_version"], thin["linker"], thin["lto"]) == (
        "clang",
        "16.0.6",
        "lld",
        "thin",
    )
    assert thin["kbuild_thinlto_cache"] == "none"
    assert rows[trees["gen513"]["build"]]["kbuild_thinlto_cache"] == "kernel-tree"
    human = extmod(["--root", root, "kernels", "--kernel-dir", trees["thinlto"]["build"]])
    assert "clang-16.0.6" in human.out and "thin" in human.out
