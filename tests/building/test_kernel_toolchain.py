"""A kernel tree read, and its toolchain found (fast, on fake trees and fake compilers;
the real trees are tests/building/test_real_build.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from extmod.core.errors import KernelError, ToolchainError
from extmod.kernel import kernel, toolchain


def fake_kernel(tmp: Path, extra: str = "", makefile: str = "") -> kernel.Kernel:
    tree = tmp / "kbuild"
    for f in kernel.PREPARED_FILES:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / f).write_text("")
    (tree / "Makefile").write_text(makefile)
    (tree / "include/generated/utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-9-amd64"\n')
    (tree / "include/config/auto.conf").write_text(
        "CONFIG_X86_64=y\nCONFIG_CC_IS_CLANG=y\nCONFIG_CLANG_VERSION=160006\n"
        "CONFIG_LD_IS_LLD=y\nCONFIG_LTO_CLANG_THIN=y\n"
        'CONFIG_CC_VERSION_TEXT="Debian clang version 16.0.6 \\"x\\""\n' + extra
    )
    return kernel.load(tree)


def test_kernel_reading(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    assert (k.release, k.arch, k.lto, k.version) == ("6.1.0-9-amd64", "x86_64", "thin", (6, 1))
    assert k.config["CONFIG_CC_VERSION_TEXT"] == 'Debian clang version 16.0.6 "x"'
    tc = toolchain.from_kernel(k)
    assert (tc.compiler, tc.version, tc.linker, tc.llvm) == ("clang", (16, 0, 6), "lld", True)
    assert k.kbuild_cache == kernel.KBUILD_CACHE_NONE
    (k.build_dir / "include/generated/autoconf.h").unlink()
    k2 = kernel.load(k.build_dir)
    with pytest.raises(KernelError, match=r"include/generated/autoconf\.h is missing"):
        k2.require_prepared()


@pytest.mark.parametrize(
    "line,gen",
    [
        (
            "KBUILD_LDFLAGS += --thinlto-cache-dir=$(extmod_prefix).thinlto-cache",
            kernel.KBUILD_CACHE_KERNEL_TREE,
        ),
        (
            "KBUILD_LDFLAGS += --thinlto-cache-dir=$(extmod-prefix).thinlto-cache",
            kernel.KBUILD_CACHE_MODULE_DIR,
        ),
    ],
)
def test_kbuild_generation(tmp_path: Path, line: str, gen: str) -> None:
    common = tmp_path / "common"
    common.mkdir()
    (common / "Makefile").write_text(f"VERSION = 5\n{line}\n")
    # Debian-style stub that includes the common Makefile.
    k = fake_kernel(tmp_path, makefile=f"include {common}/Makefile\n")
    assert k.kbuild_cache == gen


def _fake_bin(d: Path, name: str, version: str) -> None:
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text(f"#!/bin/sh\necho '{version}'\n")
    p.chmod(0o755)


def test_toolchain_versioned_names_found(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    tc = toolchain.from_kernel(k)
    bindir = tmp_path / "bin"
    for t in ("clang", "ld.lld", "llvm-ar", "llvm-nm", "llvm-objcopy", "llvm-strip"):
        _fake_bin(bindir, f"{t}-99", "clang version 99.0.0")
    tc99 = toolchain.Toolchain("clang", (99, 0, 0), "", "lld", "thin")
    r = toolchain.resolve(tc99, k, path=str(bindir))
    assert r.make_vars == (("LLVM", "-99"),) and r.cc == str(bindir / "clang-99")
    assert r.strip == str(bindir / "llvm-strip-99")
    (bindir / "ld.lld-99").unlink()
    with pytest.raises(ToolchainError, match=r"^ld.lld-99 not found: apt-get install lld-99$"):
        toolchain.resolve(tc99, k, path=str(bindir))
    assert tc.package_for("llvm-nm-16") == "llvm-16"


def test_toolchain_old_kernel_spells_out_tools(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    object.__setattr__(k, "release", "5.15.0-1")
    bindir = tmp_path / "bin"
    for t in ("clang", "ld.lld", "llvm-ar", "llvm-nm", "llvm-objcopy", "llvm-strip"):
        _fake_bin(bindir, f"{t}-99", "clang version 99.0.0")
    r = toolchain.resolve(
        toolchain.Toolchain("clang", (99, 0, 0), "", "lld", "thin"), k, path=str(bindir)
    )
    assert r.make_vars[0] == ("LLVM", "1") and ("CC", str(bindir / "clang-99")) in r.make_vars


def test_toolchain_gcc_by_plain_name(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    bindir = tmp_path / "bin"
    _fake_bin(bindir, "gcc", "gcc (Debian 77.1.0-1) 77.1.0")
    r = toolchain.resolve(
        toolchain.Toolchain("gcc", (77, 1, 0), "", "bfd", "none"), k, path=str(bindir)
    )
    assert r.make_vars == (("CC", "gcc"),)
    with pytest.raises(ToolchainError, match="gcc-78 not found: apt-get install gcc-78"):
        toolchain.resolve(
            toolchain.Toolchain("gcc", (78, 1, 0), "", "bfd", "none"), k, path=str(bindir)
        )
