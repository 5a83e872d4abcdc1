"""Modules extmod built load: boot the target kernel in qemu (software emulation) with a
busybox initramfs whose /init insmods, lists and rmmods them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, boot, check_console, copy_example, extmod, make_root

pytestmark = pytest.mark.slow


def test_debian_kernel_loads_gcc_modules(trees: dict[str, Any], tmp_path: Path) -> None:
    gcc = trees["gcc"]
    mods = []
    for example in ("hello", "twofile"):
        src = copy_example(example, tmp_path)
        r = extmod(["--root", tmp_path / "root", "--json", "build", src, "--kernel-dir",
                    gcc["build"]])
        assert r.rc == 0, r.err
        mods += [Path(m) for m in r.json()["modules"]]
    console = boot(Path(gcc["vmlinuz"]), mods, trees["busybox"], tmp_path)
    check_console(console, gcc["kver"], ["hello", "twofile"],
           ["extmod-hello: loaded", "extmod-hello: unloaded",
            "extmod-twofile: loaded, answer 42", "extmod-twofile: unloaded"])


def test_tiny_thinlto_kernel_loads_two_file_module(trees: dict[str, Any],
                                                    tmp_path: Path) -> None:
    thin = trees["thinlto"]
    src = copy_example("twofile", tmp_path)
    r = extmod(["--root", tmp_path / "root", "--json", "build", src, "--kernel-dir",
                thin["build"]])
    assert r.rc == 0, r.err
    console = boot(Path(thin["bzimage"]), [Path(m) for m in r.json()["modules"]],
                   trees["busybox"], tmp_path)
    check_console(console, thin["kver"], ["twofile"],
           ["extmod-twofile: loaded, answer 42", "extmod-twofile: unloaded"])


def test_debian_kernel_loads_installed_signed_modules(trees: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """What `extmod install` put in /lib/modules (stripped, signed with extmod's MOK key)
    loads; the kernel does not trust the key, so it only taints (no MODULE_SIG_FORCE)."""
    gcc = trees["gcc"]
    root = make_root(tmp_path / "root", gcc["kver"], gcc["build"])
    r = extmod(["--root", root, "install", EXAMPLES / "dkms-pair", "-k", gcc["kver"]])
    assert r.rc == 0, r.err
    mods = sorted((root / "lib/modules" / gcc["kver"] / "updates/dkms").glob("*.ko"))
    assert [m.name for m in mods] == ["hello.ko", "twofile.ko"]
    console = boot(Path(gcc["vmlinuz"]), mods, trees["busybox"], tmp_path)
    check_console(console, gcc["kver"], ["hello", "twofile"],
           ["extmod-hello: loaded", "extmod-twofile: loaded, answer 42"])
