"""The Linux 7 generation built from linux-source-7.3 (trixie-backports) with clang-19
(Linux 7 needs LLVM 17.0.1 or newer; Debian 13 ships 19, Debian 12 has the same 19.1.7),
issue 21. Debian's own 7.3.4 kernel (gcc-14) is in test_real_apt13.

- The tiny 7.3 kernel links vmlinux with distributed ThinLTO (CONFIG_LTO_CLANG_THIN_DIST,
  new in 7.x). A module's link is still lld's in-process ThinLTO (Makefile.modfinal), so
  extmod gives it its managed cache as on a CONFIG_LTO_CLANG_THIN tree: a two-file module
  builds with clang-19 and ld.lld-19, fills the cache, and loads in qemu on that kernel;
  ``extmod verify`` boots it with the module signed by the kernel's own key.

No defconfig 7.3 tree: on 7.x modpost fails a module on every symbol when the tree has no
Module.symvers (6.1 only warned), so a modules_prepare tree cannot link one, and a full
defconfig ThinLTO build takes over 30 minutes here. Debian's 7.3.4 headers are the
distribution-sized 7.3 tree (test_real_apt13).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, boot, check_console, copy_example, extmod, make_root

pytestmark = pytest.mark.slow


def test_tiny_thin_dist_73_kernel_builds_with_the_cache_and_loads(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    thin = trees["thinlto73"]
    config = (Path(thin["build"]) / ".config").read_text()
    assert "CONFIG_LTO_CLANG_THIN_DIST=y" in config and "CONFIG_LTO_CLANG_THIN=y" not in config
    src = copy_example("twofile", tmp_path)
    r = extmod(["--root", tmp_path / "root", "--json", "build", src, "--kernel-dir", thin["build"]])
    assert r.rc == 0, r.err
    assert "clang version 19" in r.json()["compiler"], r.json()
    cache = Path(r.json()["thinlto_cache_dir"])
    assert any(cache.iterdir()), "the module link did not use extmod's ThinLTO cache"
    modules = [Path(m) for m in r.json()["modules"]]
    assert all(m.read_bytes()[:4] == b"\x7fELF" for m in modules)  # linked, not bitcode
    console = boot(Path(thin["bzimage"]), modules, trees["busybox"], tmp_path / "qemu")
    check_console(
        console,
        thin["kver"],
        ["twofile"],
        ["extmod-twofile: loaded, answer 42", "extmod-twofile: unloaded"],
    )


def test_verify_on_the_tiny_73_kernel(trees: dict[str, Any], tmp_path: Path) -> None:
    thin = trees["thinlto73"]
    root = make_root(tmp_path / "root", thin["kver"], thin["build"])
    r = extmod(["--root", root, "-q", "install", EXAMPLES / "dkms-pair", "-k", thin["kver"]])
    assert r.rc == 0, r.err
    r = extmod(["--root", root, "--json", "verify", "--timeout", "120", "-k", thin["kver"]])
    assert r.rc == 0, r.out + r.err
    (report,) = r.json()["kernels"]
    assert report["booted"] == thin["kver"] and not report["timed_out"], report
    got = {row["module"]: row for row in report["rows"]}
    for name in ("hello", "twofile"):
        assert got[name]["result"] == "loaded" and got[name]["unloaded"] == "yes", got
