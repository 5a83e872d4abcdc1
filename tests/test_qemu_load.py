"""Modules extmod built load: boot the target kernel in qemu (software emulation) with a
busybox initramfs whose /init insmods, lists and rmmods them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, copy_example, extmod, make_root

pytestmark = pytest.mark.slow

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
echo "EXTMOD-KERNEL $(uname -r)"
for m in /mods/*.ko; do insmod "$m" && echo "EXTMOD-INSMOD-OK $(basename "$m")"; done
cat /proc/modules
for m in /mods/*.ko; do n=$(basename "$m" .ko); rmmod "$n" && echo "EXTMOD-RMMOD-OK $n"; done
dmesg | grep extmod-
echo EXTMOD-DONE
reboot -f
"""


def boot(kernel: Path, modules: list[Path], busybox: str, work: Path) -> str:
    rootfs = work / "initramfs"
    for d in ("bin", "proc", "sys", "dev", "mods"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy(busybox, rootfs / "bin/busybox")
    (rootfs / "init").write_text(INIT)
    (rootfs / "init").chmod(0o755)
    for ko in modules:
        shutil.copy(ko, rootfs / "mods" / ko.name)
    cpio = work / "initramfs.cpio"
    files = subprocess.run(["find", "."], cwd=rootfs, capture_output=True, check=True).stdout
    with open(cpio, "wb") as out:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=rootfs, input=files,
                       stdout=out, check=True)
    res = subprocess.run(
        ["timeout", "240", "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic",
         "-no-reboot", "-kernel", str(kernel), "-initrd", str(cpio),
         "-append", "console=ttyS0 panic=-1 loglevel=7"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return res.stdout + res.stderr


def _check(console: str, kver: str, names: list[str], messages: list[str]) -> None:
    assert "EXTMOD-DONE" in console, console[-3000:]
    assert f"EXTMOD-KERNEL {kver}" in console
    for n in names:
        assert f"EXTMOD-INSMOD-OK {n}.ko" in console, console[-3000:]
        assert f"EXTMOD-RMMOD-OK {n}" in console
    for msg in messages:
        assert msg in console, console[-3000:]


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
    _check(console, gcc["kver"], ["hello", "twofile"],
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
    _check(console, thin["kver"], ["twofile"],
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
    _check(console, gcc["kver"], ["hello", "twofile"],
           ["extmod-hello: loaded", "extmod-twofile: loaded, answer 42"])
