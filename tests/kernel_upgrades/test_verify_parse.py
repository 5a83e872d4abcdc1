"""extmod verify's pieces that need no VM, fast: the console read back into rows (markers
with the run's word; a module's own printk cannot pass for one), the initramfs as cpio
reads it, a static busybox told from a dynamic one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from extmod.kernel import vm
from extmod.ops import verify

W = "abcd1234"


def _report(*modules: str) -> verify.KernelReport:
    r = verify.KernelReport("6.1.0-9-amd64", "x86_64", "/boot/vmlinuz")
    r.rows = [verify.ModuleRow("p/1", m, f"updates/dkms/{m}.ko") for m in modules]
    return r


def test_console_to_rows() -> None:
    m = f"@{W}@"
    console = "\n".join(
        [
            "[    0.1] booting",
            f"{m} READY 6.1.0-9-amd64",
            f"{m} BEGIN good",
            f"{m} RC good 0",
            f"{m} KMSG good [    1.0] extmod-good: loaded",
            f"{m} TAINT good 4096",
            f"{m} BEGIN nodev",
            f"{m} RC nodev 1",
            f"{m} OUT nodev modprobe: can't load module nodev (x.ko): No such device",
            f"{m} KMSG nodev [    1.1] extmod-nodev: no device here",
            f"{m} TAINT nodev 4096",
            f"{m} BEGIN sym",
            f"{m} RC sym 1",
            f"{m} OUT sym modprobe: can't load module sym: unknown symbol in module",
            f"{m} KMSG sym [    1.2] sym: Unknown symbol extmod_x (err -2)",
            f"{m} TAINT sym 4096",
            f"{m} BEGIN crash",
            f"{m} RC crash 139",
            f"{m} KMSG crash [    1.3] kernel BUG at /x/crash.c:5!",
            f"{m} TAINT crash 4224",
            "@other@ RC good 1",  # another word: a module's printk, not ours
            f"{m} RMMOD good 0 ",
            f"{m} RMMOD crash 1 rmmod: can't unload module 'crash': busy",
            f"{m} DONE",
        ]
    )
    r = _report("good", "nodev", "sym", "crash")
    verify._read_console(console, W, r)
    rows = {x.module: x for x in r.rows}
    assert r.booted == "6.1.0-9-amd64"
    assert (rows["good"].result, rows["good"].unloaded) == ("loaded", "yes")
    assert rows["nodev"].result == "failed" and rows["nodev"].no_device
    assert "No such device" in rows["nodev"].detail
    assert rows["sym"].result == "failed" and not rows["sym"].no_device
    assert rows["sym"].detail.endswith("sym: Unknown symbol extmod_x (err -2)")
    assert rows["crash"].result == "oops" and "kernel BUG at" in rows["crash"].detail
    assert rows["crash"].unloaded == ""  # an oopsed module's unload is not judged
    assert not r.ok


def test_a_hang_and_a_panic_are_said() -> None:
    m = f"@{W}@"
    r = _report("spin", "after")
    verify._read_console(f"{m} READY k\n{m} BEGIN spin\n", W, r)
    assert [x.result for x in r.rows] == ["hung", "not tried"]
    r = _report("boom")
    verify._read_console(f"{m} READY k\n{m} BEGIN boom\nKernel panic - not syncing: x\n", W, r)
    assert r.rows[0].result == "oops" and "Kernel panic" in r.rows[0].detail
    r = _report("x")
    verify._read_console("nothing at all", W, r)
    assert not r.booted and not r.ok


def test_initramfs_is_a_cpio_archive(tmp_path: Path) -> None:
    out = tmp_path / "i.cpio"
    vm.write_initramfs({"init": b"#!/bin/sh\n", "lib/modules/k/a.ko": b"\x7fELF"}, out)
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], stdin=open(out, "rb"), capture_output=True, text=True
    ).stdout.split()
    assert listing == ["lib", "lib/modules", "lib/modules/k", "init", "lib/modules/k/a.ko"]
    verbose = subprocess.run(
        ["cpio", "-itv", "--quiet"], stdin=open(out, "rb"), capture_output=True, text=True
    ).stdout
    assert any(
        line.startswith("-rwxr-xr-x") and line.endswith(" init") for line in verbose.splitlines()
    )


def test_static_busybox_is_told_from_a_dynamic_binary() -> None:
    assert vm.is_static(Path("/bin/busybox"))
    assert not vm.is_static(Path("/bin/ls"))
    assert not vm.is_static(Path("/etc/os-release"))
