"""Boot a kernel image in qemu with an initramfs made on the fly, and read what its /init
printed on the serial console. Always bounded by a timeout; the VM is the child's own
process group, killed whole when the time is up, and nothing of it outlives extmod.

KVM is used when /dev/kvm can be opened and a boot under it reaches /init; otherwise TCG
(a nested machine may offer a /dev/kvm that cannot run a guest: that is found out once
and remembered, keyed by the host kernel and qemu)."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from extmod.core import atomic, hints, run
from extmod.core.errors import CannotVerifyError
from extmod.core.paths import Paths
from extmod.kernel.kernel import Kernel

_QEMU = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}
_QEMU_PACKAGE = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}
_MACHINE_ARGS = {"aarch64": ["-M", "virt", "-cpu", "max"]}
_CONSOLE = {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}


@dataclass(frozen=True)
class Machine:
    qemu: str
    busybox: Path
    arch: str


@dataclass(frozen=True)
class Boot:
    console: str  # what the serial console printed
    accel: str  # "kvm" or "tcg"
    seconds: float
    timed_out: bool


def machine(arch: str) -> Machine:
    """qemu for ``arch`` and a static busybox, or CannotVerifyError naming the package."""
    name = _QEMU.get(arch)
    if name is None:
        raise CannotVerifyError(f"cannot verify {arch} kernels: no qemu system emulator known")
    qemu = shutil.which(name)
    if qemu is None:
        raise CannotVerifyError(f"{name} not found: {hints.install(_QEMU_PACKAGE[arch])}")
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.is_file() and is_static(candidate):
            return Machine(qemu, candidate, arch)
    raise CannotVerifyError(
        "no static busybox (/bin/busybox) for the VM's initramfs: "
        + hints.install("busybox-static")
    )


def is_static(path: Path) -> bool:
    """An ELF executable without a program interpreter (PT_INTERP) runs with no libc."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
                return False
            end = "<" if head[5] == 1 else ">"
            phoff, phentsize, phnum = (
                struct.unpack_from(end + "Q", head, 32)[0],
                *struct.unpack_from(end + "HH", head, 54),
            )
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    kinds = [struct.unpack_from(end + "I", table, i * phentsize)[0] for i in range(phnum)]
    return 3 not in kinds  # PT_INTERP


def image(paths: Paths, kernel: Kernel, explicit: Path | None = None) -> Path:
    """The kernel image to boot: ``--image``, ROOT/boot/vmlinuz-KVER, or the tree's own
    arch/*/boot/bzImage (a kernel built here)."""
    if explicit is not None:
        if not explicit.is_file():
            raise CannotVerifyError(f"--image {explicit}: no such file")
        return explicit
    candidates = [paths.root / "boot" / f"vmlinuz-{kernel.release}"]
    candidates += sorted(kernel.build_dir.glob("arch/*/boot/bzImage"))
    candidates += sorted(kernel.build_dir.glob("arch/*/boot/Image"))
    for c in candidates:
        if c.is_file():
            return c
    raise CannotVerifyError(
        f"no kernel image for {kernel.release}: {candidates[0]} does not exist "
        f"({hints.install(f'linux-image-{kernel.release}')}, or give --image FILE)"
    )


def write_initramfs(files: dict[str, Path | bytes], out: Path) -> None:
    """A newc cpio of ``files`` (path in the image -> a file to copy, or its content);
    the dirs they need are added. Written beside ``out`` and renamed."""
    parents = {str(q) for p in files for q in Path(p).parents if str(q) != "."}

    def fill(f: BinaryIO) -> None:
        ino = 1
        for d in sorted(parents):
            f.write(_cpio_entry(d, stat.S_IFDIR | 0o755, b"", ino))
            ino += 1
        for name, src in sorted(files.items()):
            data = src if isinstance(src, bytes) else src.read_bytes()
            executable = name == "init" or (isinstance(src, Path) and os.access(src, os.X_OK))
            f.write(_cpio_entry(name, stat.S_IFREG | (0o755 if executable else 0o644), data, ino))
            ino += 1
        f.write(_cpio_entry("TRAILER!!!", 0, b"", 0))

    atomic.write_stream(out, fill)


def _cpio_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    """One newc record: header, name (NUL-ended), data, each padded to 4 bytes."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    out = b"070701" + b"".join(b"%08X" % v for v in fields) + encoded
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def boot(
    m: Machine,
    kernel_image: Path,
    initramfs: Path,
    append: str,
    *,
    timeout: int,
    memory: int,
    ready: str,
    done: str,
    kvm_memo: Path,
    accel: str = "auto",
) -> Boot:
    """Boot and return the console. ``ready``: what /init prints first; a KVM boot that
    does not get there within 10 s (it takes about one under KVM) is taken as KVM not
    working here (remembered), and the boot is done again under TCG."""
    if accel == "kvm" or (accel == "auto" and _kvm_usable(m, kvm_memo)):
        got = _run(m, kernel_image, initramfs, append, "kvm", timeout, memory, (ready, done))
        if ready in got.console or accel == "kvm":
            return got
        atomic.write_text(kvm_memo, _host_key(m))
    return _run(m, kernel_image, initramfs, append, "tcg", timeout, memory, ("", done))


def _kvm_usable(m: Machine, memo: Path) -> bool:
    if m.arch != os.uname().machine or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        return memo.read_text() != _host_key(m)
    except OSError:
        return True


def _host_key(m: Machine) -> str:
    st = os.stat(m.qemu)
    return f"{os.uname().release} {m.qemu} {st.st_size} {int(st.st_mtime)}"


def _run(
    m: Machine,
    kernel_image: Path,
    initramfs: Path,
    append: str,
    accel: str,
    timeout: int,
    memory: int,
    marks: tuple[str, str],
) -> Boot:
    """One boot; ended once /init printed its last line (``marks[1]``) and a second has
    passed; with ``marks[0]``, given up when /init has not printed that within 10 s."""
    ready, done = marks
    console = initramfs.parent / f"console-{accel}.log"
    console.unlink(missing_ok=True)
    argv = [m.qemu, "-accel", accel, *_MACHINE_ARGS.get(m.arch, []), "-m", str(memory)]
    argv += ["-smp", "1", "-display", "none", "-no-reboot", "-nodefaults"]
    argv += ["-serial", f"file:{console}", "-kernel", str(kernel_image), "-initrd", str(initramfs)]
    argv += ["-append", f"console={_CONSOLE.get(m.arch, 'ttyS0')} panic=-1 {append}"]

    finished: list[float] = []

    def keep_going(elapsed: float) -> bool:
        text = _read(console)
        if done in text:
            finished.append(elapsed)
            return elapsed - finished[0] < 1.0  # the reboot should end qemu by itself
        return not ready or elapsed < 10 or ready in text

    started = time.monotonic()
    outcome = run.watched(argv, timeout=timeout, keep_going=keep_going)
    took = finished[0] if finished else time.monotonic() - started
    return Boot(_read(console), accel, took, outcome == "timed out")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
