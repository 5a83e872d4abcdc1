"""extmod's Debian package in DKMS's place on Debian 13 (issue 21), with apt in real trixie
chroots (the cached mmdebstrap base system; every other package from the archive).

a. apt installs extmod's .deb, then trixie's kernel headers (gcc-14) and v4l2loopback-dkms,
   which needs ``dkms (>= 3.0.11)``: extmod's ``Provides: dkms (= 3.2.2)`` meets it, so apt
   keeps extmod (with 3.0.10 it removed extmod and installed Debian's dkms 3.2.2). The
   module is built by extmod's common.postinst and installed in /lib/modules/KVER/updates/dkms.
b. The same packages with Debian's dkms 3.2.2 in a second chroot: ``dkms status`` prints the
   same lines in both. Then extmod's .deb replaces that dkms, takes over its build without
   compiling, and ``dkms status`` still prints them.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chroot import Chroot
from conftest import boot, check_console, extmod

pytestmark = [pytest.mark.slow, pytest.mark.disk]

PACKAGE = "v4l2loopback-dkms"  # Depends: dkms (>= 3.0.11) in trixie


@pytest.fixture(scope="module")
def extmod13(
    trees: dict[str, Any], deb: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chroot]:
    c = Chroot(trees, tmp_path_factory.mktemp("apt13") / "root", "chroot13")
    shutil.copy(deb, c.root / "tmp")
    yield c
    c.remove()


def kernels(c: Chroot) -> list[str]:
    return sorted(p.parent.name for p in (c.root / "lib/modules").glob("*/build"))


def status(c: Chroot, tool: str) -> list[str]:
    return sorted(c.run(f"{tool} status 2>/dev/null").splitlines())


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_a_trixie_packages_needing_dkms_3_0_11_keep_extmod(extmod13: Chroot, deb: Path) -> None:
    c = extmod13
    assert "VERSION_CODENAME=trixie" in (c.root / "etc/os-release").read_text()
    c.apt(f"install /tmp/{deb.name}")
    c.apt("install linux-headers-amd64")
    (kver,) = kernels(c)
    assert kver.endswith("+deb13-amd64"), kver
    out = c.apt(f"install {PACKAGE}")
    assert c.installed("extmod") and c.installed(PACKAGE), out[-3000:]
    assert not c.installed("dkms"), out[-3000:]  # apt did not swap extmod for dkms
    assert "Building for" in out, out[-3000:]  # extmod's common.postinst
    # built with the compiler the kernel names (Debian 13's headers: x86_64-linux-gnu-gcc-14)
    logs = c.run("grep -rh '^# compiler' /var/lib/extmod/build/v4l2loopback/ || true")
    assert "x86_64-linux-gnu-gcc-14" in logs, logs
    found = c.modules(kver, "v4l2loopback")
    assert [p.relative_to(c.root / "lib/modules" / kver).as_posix() for p in found] == [
        "updates/dkms/v4l2loopback.ko.xz"  # the kernel compresses its modules with xz
    ], found
    version = c.run(f"dpkg-query -W -f='${{Version}}' {PACKAGE}").strip().split("-")[0]
    dk = status(c, "dkms")
    assert dk == [f"v4l2loopback/{version}, {kver}, x86_64: installed"], dk
    assert status(c, "extmod") == dk
    assert c.run("dkms --version").strip() == "dkms-3.2.2"


def test_b_same_status_as_debians_dkms_3_2_2_and_the_migration(
    trees: dict[str, Any], deb: Path, extmod13: Chroot, tmp_path: Path
) -> None:
    c = Chroot(trees, tmp_path / "root", "chroot13")
    try:
        c.apt("install dkms linux-headers-amd64")
        assert c.run("dkms --version").strip() == "dkms-3.2.2"
        c.apt(f"install {PACKAGE}")
        (kver,) = kernels(c)
        theirs = status(c, "dkms")
        assert theirs == status(extmod13, "dkms"), (theirs, status(extmod13, "dkms"))
        ko = c.modules(kver, "v4l2loopback")
        assert len(ko) == 1
        digest, mtime = _digest(ko[0]), ko[0].stat().st_mtime_ns
        shutil.copy(deb, c.root / "tmp")
        out = c.apt(f"install /tmp/{deb.name}")
        assert not c.installed("dkms") and c.installed("extmod") and c.installed(PACKAGE)
        assert "imported: installed" in out and "building" not in out, out[-3000:]
        ko = c.modules(kver, "v4l2loopback")
        assert len(ko) == 1 and (_digest(ko[0]), ko[0].stat().st_mtime_ns) == (digest, mtime)
        assert status(c, "dkms") == theirs
        # the kernel hooks are extmod's now, at dkms's paths (preinst.d too)
        assert "EXTMOD=" in (c.root / "etc/kernel/preinst.d/dkms").read_text()
        out = c.run(f"/etc/kernel/preinst.d/dkms {kver} /boot/vmlinuz-{kver} 2>&1")
        assert status(c, "dkms") == [theirs[0].split(",")[0] + ": added"], out
        out = c.run(f"/etc/kernel/header_postinst.d/dkms {kver} 2>&1")
        assert status(c, "dkms") == theirs, out
    finally:
        c.remove()


def test_c_the_guard_refuses_linux_7_for_a_critical_module(extmod13: Chroot) -> None:
    """Issue 25 on Debian 13: v4l2loopback 0.15.0 builds on 6.12 and not on 7.3. With
    [guard] mode = refuse and v4l2loopback critical, apt's hook preflights the incoming
    7.3 header packages and stops apt before dpkg unpacks anything; dpkg is left clean."""
    c = extmod13
    (old,) = kernels(c)
    conf = c.root / "etc/extmod/config.toml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text('[guard]\nmode = "refuse"\ncritical = ["v4l2loopback"]\n')
    try:
        out = c.apt(
            "install -t trixie-backports linux-image-amd64 linux-headers-amd64 2>&1", check=False
        )
    finally:
        conf.unlink()
    refused = [line for line in out.splitlines() if "refusing kernel 7." in line]
    assert len(refused) == 1 and "v4l2loopback/" in refused[0], out[-4000:]
    assert "Unpacking" not in out, out[-4000:]
    assert kernels(c) == [old]
    assert c.run("dpkg --audit").strip() == ""


def test_c_preflight_of_the_next_upgrades_kernel(extmod13: Chroot) -> None:
    """``extmod preflight --candidates``: with trixie-backports pinned as the upgrade
    source, the installed linux-headers-amd64 would bring 7.3: its header packages are
    fetched with apt-get download and every AUTOINSTALL package is built for it; nothing
    is installed."""
    c = extmod13
    (old,) = kernels(c)
    pin = c.root / "etc/apt/preferences.d/extmod-test"
    pin.write_text("Package: *\nPin: release n=trixie-backports\nPin-Priority: 500\n")
    try:
        out = c.run("extmod --json preflight --candidates 2>/dev/null", check=False)
    finally:
        pin.unlink()
    rows = json.loads(out)["rows"]
    assert [r["kver"][:2] for r in rows] == ["7."], rows
    assert rows[0]["package"].startswith("v4l2loopback/") and rows[0]["verdict"] == "fails"
    assert kernels(c) == [old] and not c.installed(f"linux-headers-{rows[0]['kver']}")


def test_c_linux_7_from_trixie_backports_builds_and_loads(
    extmod13: Chroot, trees: dict[str, Any], tmp_path: Path
) -> None:
    """trixie-backports' Linux 7.3 (gcc-14, MODVERSIONS off, modules signed and
    xz-compressed): apt installs the kernel image and headers; the image's preinst.d hook
    (a first install: nothing to do), its postinst.d hook and the headers' header_postinst.d
    hook build every package for it; the modules load in qemu on Debian's own vmlinuz."""
    c = extmod13
    c.apt("install acpi-call-dkms vpoll-dkms")
    (old,) = kernels(c)
    out = c.apt("install -t trixie-backports linux-image-amd64 linux-headers-amd64")
    (new,) = [k for k in kernels(c) if k != old]
    assert new.startswith("7.") and new.endswith("+deb13-amd64"), new
    config = (c.root / f"boot/config-{new}").read_text()
    assert "# CONFIG_MODVERSIONS is not set" in config and "CONFIG_MODULE_SIG=y" in config
    dk = status(c, "dkms")
    for ident in ("acpi-call/1.2.2", "vpoll/0.1.1"):
        assert f"{ident}, {new}, x86_64: installed" in dk, (dk, out[-4000:])
        assert f"{ident}, {old}, x86_64: installed" in dk, dk
    # v4l2loopback 0.15.0 does not compile on 7.3 (v4l2_fh_add lost an argument): named,
    # and apt succeeds; it stays installed on the old kernel
    v4l = [line for line in dk if line.startswith("v4l2loopback/")]
    assert any(old in line for line in v4l), dk
    assert any(new in line for line in v4l) or f"for {new} failed: " in out, out[-4000:]
    assert status(c, "extmod") == dk
    mods = []
    for stem in ("vpoll", "acpi_call"):
        (ko,) = c.modules(new, stem)
        assert ko.name == f"{stem}.ko.xz", ko
        plain = tmp_path / f"{stem}.ko"  # busybox insmod cannot decompress
        plain.write_bytes(lzma.decompress(ko.read_bytes()))
        mods.append(plain)
    console = boot(c.root / f"boot/vmlinuz-{new}", mods, trees["busybox"], tmp_path / "qemu")
    check_console(console, new, ["vpoll", "acpi_call"], [])
    # extmod verify (from the host, on the chroot as its root): Debian's 7.3.4 vmlinuz
    # boots with every module extmod installed for it, and each loads
    r = extmod(["--root", c.root, "--json", "verify", "-k", new], timeout=900)
    assert r.rc == 0, r.out + r.err
    (report,) = r.json()["kernels"]
    assert report["booted"] == new and not report["timed_out"], report
    got = {row["module"]: row for row in report["rows"]}
    for name in ("acpi_call", "vpoll"):
        assert got[name]["result"] == "loaded", got


def test_d_purge_reinstall_and_kernel_removal(extmod13: Chroot) -> None:
    """The rest of a package's and a kernel's life on Debian 13, with the real maintainer
    scripts: purging a -dkms package (dh_dkms's prerm: ``dkms remove --all``) takes its
    modules off every kernel; ``--reinstall`` (prerm remove, postinst add and build) puts
    them back; removing the 7.3 kernel (its prerm.d hook) forgets everything extmod kept
    for it, and the other kernel keeps its modules."""
    c = extmod13
    old, new = sorted(kernels(c), key=lambda k: k.startswith("7."))
    assert new.startswith("7."), (old, new)

    c.apt("purge vpoll-dkms")
    assert not [line for line in status(c, "dkms") if line.startswith("vpoll/")]
    assert c.modules(old, "vpoll") == [] and c.modules(new, "vpoll") == []
    assert not (c.root / "usr/src/vpoll-0.1.1").exists()

    before = {k: [_digest(p) for p in c.modules(k, "acpi_call")] for k in (old, new)}
    c.apt("install --reinstall acpi-call-dkms")
    dk = status(c, "dkms")
    for k in (old, new):
        assert f"acpi-call/1.2.2, {k}, x86_64: installed" in dk, dk
        assert len(c.modules(k, "acpi_call")) == 1 == len(before[k]), c.modules(k, "acpi_call")

    c.apt(f"remove linux-image-{new} linux-headers-{new}")
    dk = status(c, "dkms")
    assert not [line for line in dk if new in line], dk
    assert f"acpi-call/1.2.2, {old}, x86_64: installed" in dk, dk
    state = c.root / "var/lib/extmod"
    assert not list(state.glob(f"build/*/*/{new}")), "build dirs of the removed kernel"
    assert not list(state.glob(f"packages/*/*/built/{new}")), "builds of the removed kernel"
    assert not (state / "installed" / new).exists()
