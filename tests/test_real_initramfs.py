"""The initramfs follows the modules (issue 25), with Debian's real initramfs-tools in a
Debian 12 chroot: extmod's .deb, Debian's 6.1 image and headers, and acpi-call-dkms, whose
module /etc/initramfs-tools/modules asks the initramfs to carry.

- The kernel's postinst.d runs extmod's hook before initramfs-tools' (run-parts order), so
  a kernel's first initramfs already sees the modules extmod built for it.
- apt installs acpi-call-dkms: extmod installs the module and makes the initramfs again;
  lsinitramfs lists acpi_call.ko and the copy inside has the installed srcversion.
- The source changes and extmod installs the new build: the initramfs is made again and
  carries the new srcversion; doctor finds no stale image.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chroot import Chroot

pytestmark = [pytest.mark.slow, pytest.mark.disk]


@pytest.fixture(scope="module")
def system(
    trees: dict[str, Any], deb: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chroot]:
    c = Chroot(trees, tmp_path_factory.mktemp("initramfs") / "root")
    # the base system's stand-ins for update-initramfs out: the real one is the subject
    for where in ("usr/local/sbin", "usr/sbin"):
        (c.root / where / "update-initramfs").unlink()
    div = c.root / "var/lib/dpkg/diversions"
    div.write_text(
        div.read_text().replace(
            "/usr/sbin/update-initramfs\n/usr/sbin/update-initramfs.distrib\n:\n", ""
        )
    )
    shutil.copy(deb, c.root / "tmp")
    yield c
    c.remove()


def _srcversions(c: Chroot, kver: str) -> tuple[str, str]:
    """(the installed acpi_call.ko's srcversion, that of the copy in the initramfs)."""
    installed = c.run(f"modinfo -F srcversion /lib/modules/{kver}/updates/dkms/acpi_call.ko")
    with tempfile.TemporaryDirectory(dir=c.root / "tmp") as tmp:
        inside = Path(tmp).relative_to(c.root)
        c.run(f"unmkinitramfs /boot/initrd.img-{kver} /{inside}")
        copies = [p for p in Path(tmp).rglob("acpi_call.ko*")]
        assert len(copies) == 1, copies
        rel = copies[0].relative_to(c.root)
        got = c.run(f"modinfo -F srcversion /{rel}")
    return installed.strip(), got.strip()


def test_the_initramfs_follows_an_installed_module(
    system: Chroot, deb: Path, trees: dict[str, Any]
) -> None:
    kver = trees["gcc"]["kver"]
    system.apt(f"install /tmp/{deb.name}")
    system.apt(f"install initramfs-tools linux-headers-{kver} linux-image-{kver}")
    assert (system.root / f"boot/initrd.img-{kver}").is_file()
    order = system.run(f"run-parts --test --arg={kver} /etc/kernel/postinst.d").split()
    assert order.index("/etc/kernel/postinst.d/dkms") < order.index(
        "/etc/kernel/postinst.d/initramfs-tools"
    ), order

    (system.root / "etc/initramfs-tools/modules").write_text("acpi_call\n")
    out = system.apt("install acpi-call-dkms")
    assert f"initrd.img-{kver} carries acpi_call: update-initramfs -u -k {kver}" in out, out[-3000:]
    assert "acpi_call.ko" in system.run(f"lsinitramfs /boot/initrd.img-{kver}")
    first, inside = _srcversions(system, kver)
    assert first and inside == first

    src = system.root / "usr/src/acpi-call-1.2.2/acpi_call.c"
    src.write_text(src.read_text() + "\nint extmod_initramfs_test;\n")
    out = system.run(f"extmod install acpi-call -k {kver} 2>&1")
    assert "update-initramfs -u -k" in out, out
    now, inside = _srcversions(system, kver)
    assert now != first and inside == now
    doctor = system.run(f"extmod doctor -k {kver} 2>&1", check=False)
    assert "initramfs" not in doctor, doctor
