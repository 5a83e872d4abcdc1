"""The initramfs follows the modules (issue 25), with Debian's real initramfs-tools in a
Debian 12 chroot: extmod's .deb, Debian's 6.1 headers, and acpi-call-dkms, whose
module /etc/initramfs-tools/modules asks the initramfs to carry.

- The kernel's postinst.d runs extmod's hook before initramfs-tools' (run-parts order), so
  a kernel's first initramfs already sees the modules extmod built for it.
- apt installs acpi-call-dkms: extmod installs the module and makes the initramfs again;
  lsinitramfs lists acpi_call.ko and the copy inside is the installed file.
- The source changes and extmod installs the new build: the initramfs is made again and
  carries the new module; doctor finds no stale image.
"""

from __future__ import annotations

import hashlib
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


def _versions(c: Chroot, kver: str) -> tuple[str, str]:
    """(the installed acpi_call.ko's sha256, that of its copy in the initramfs): acpi_call
    has no MODULE_VERSION, so no srcversion; the copy is the file itself."""
    installed = c.root / f"lib/modules/{kver}/updates/dkms/acpi_call.ko"
    with tempfile.TemporaryDirectory(dir=c.root / "tmp") as tmp:
        inside = Path(tmp).relative_to(c.root)
        c.run(f"unmkinitramfs /boot/initrd.img-{kver} /{inside}")
        copies = list(Path(tmp).rglob("acpi_call.ko*"))
        assert len(copies) == 1, copies
        return _sha(installed), _sha(copies[0])


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_the_initramfs_follows_an_installed_module(
    system: Chroot, deb: Path, trees: dict[str, Any]
) -> None:
    kver = trees["gcc"]["kver"]
    system.apt(f"install /tmp/{deb.name}")
    system.apt(f"install initramfs-tools linux-headers-{kver}")
    # the kernel's first initramfs, as its image's postinst makes it; only the modules
    # named in /etc/initramfs-tools/modules (MODULES=list: the image's 3,000 are not
    # needed to show that one follows), its config where the image puts it
    conf = system.root / "etc/initramfs-tools/conf.d/extmod-test"
    conf.write_text("MODULES=list\nCOMPRESS=gzip\n")
    shutil.copyfile(
        system.root / f"usr/src/linux-headers-{kver}/.config", system.root / f"boot/config-{kver}"
    )
    system.run(f"update-initramfs -c -k {kver}")
    assert (system.root / f"boot/initrd.img-{kver}").is_file()
    order = system.run(f"run-parts --test --arg={kver} /etc/kernel/postinst.d").split()
    assert order.index("/etc/kernel/postinst.d/dkms") < order.index(
        "/etc/kernel/postinst.d/initramfs-tools"
    ), order

    (system.root / "etc/initramfs-tools/modules").write_text("acpi_call\n")
    out = system.apt("install acpi-call-dkms")
    assert f"initrd.img-{kver} carries acpi_call: update-initramfs -u -k {kver}" in out, out[-3000:]
    assert "acpi_call.ko" in system.run(f"lsinitramfs /boot/initrd.img-{kver}")
    first, inside = _versions(system, kver)
    assert first and inside == first

    src = system.root / "usr/src/acpi-call-1.2.2/acpi_call.c"
    src.write_text(src.read_text() + "\nint extmod_initramfs_test;\n")
    out = system.run(f"extmod install acpi-call -k {kver} 2>&1")
    assert "update-initramfs -u -k" in out, out
    now, inside = _versions(system, kver)
    assert now != first and inside == now
    doctor = system.run(f"extmod doctor -k {kver} 2>&1", check=False)
    assert "initramfs" not in doctor, doctor
