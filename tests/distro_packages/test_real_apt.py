"""extmod's Debian package in DKMS's place, proven with apt in a real Debian 12 chroot
(issue 12). The .deb is built from this checkout with Debian's tools (scripts/deb.sh:
dpkg-buildpackage, lintian clean); the chroot is the cached mmdebstrap base system, and every
other package comes from the archive through apt.

a. apt installs extmod, Debian's 6.1 headers, and vpoll-dkms, acpi-call-dkms and
   v4l2loopback-dkms: their ``Depends: dkms`` is met by extmod, their postinst runs extmod's
   common.postinst, the modules land in /lib/modules/KVER/updates/dkms, and ``dkms status``
   and ``extmod status`` agree.
e. those modules load in qemu on Debian's own vmlinuz of that kernel.
b. apt's guard (issue 25): with [guard] mode = refuse and vpoll critical, installing 6.12's
   headers stops before dpkg unpacks anything (dpkg --audit empty); in the default mode
   (warn) the missing modules are named before the unpack, and the hooks take acpi-call,
   which the guard's preflight built, from the build store.
   Debian's 6.12 headers from bookworm-backports: their hooks (the image's postinst.d and the
   headers' header_postinst.d) build every package for 6.12; the two whose source does not
   compile on 6.12 (vpoll 0.1: class_create; v4l2loopback 0.12.7: strlcpy) are named with
   their error, and apt succeeds.
c. remove and purge leave no module and no registration; --reinstall ends as it began,
   compiling nothing (the build store; a gcc-12 that fails if asked proves it); the
   upgrade to v4l2loopback-dkms 0.13.2 (backports) ends with that version alone, installed
   on both kernels.
d. migration: Debian's dkms builds vpoll-dkms; installing extmod's .deb replaces dkms,
   rebuilds nothing, keeps the module, and extmod handles the next apt operations.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chroot import Chroot
from conftest import boot, check_console

pytestmark = [pytest.mark.slow, pytest.mark.disk]

PACKAGES = ("vpoll-dkms", "acpi-call-dkms", "v4l2loopback-dkms")
STEMS = ("vpoll", "acpi_call", "v4l2loopback")


@pytest.fixture(scope="module")
def system(
    trees: dict[str, Any], deb: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chroot]:
    c = Chroot(trees, tmp_path_factory.mktemp("apt") / "root")
    shutil.copy(deb, c.root / "tmp")
    yield c
    c.remove()


def status(c: Chroot, tool: str) -> list[str]:
    return sorted(c.run(f"{tool} status 2>/dev/null").splitlines())


def test_a_dkms_packages_install_through_extmod(
    system: Chroot, deb: Path, trees: dict[str, Any]
) -> None:
    kver = trees["gcc"]["kver"]
    system.apt(f"install /tmp/{deb.name}")
    system.apt(f"install linux-headers-{kver}")
    out = system.apt(f"install {' '.join(PACKAGES)}")
    assert system.installed("extmod") and not system.installed("dkms")
    assert "Building for" in out  # extmod's common.postinst ran
    for stem in STEMS:
        found = system.modules(kver, stem)
        assert [p.relative_to(system.root / "lib/modules" / kver) for p in found] == [
            Path(f"updates/dkms/{stem}.ko")
        ], (stem, found)
        assert (
            f"updates/dkms/{stem}.ko:"
            in (system.root / "lib/modules" / kver / "modules.dep").read_text()
        )
    dk = status(system, "dkms")
    assert dk == sorted(
        f"{n}, {kver}, x86_64: installed"
        for n in ("acpi-call/1.2.2", "v4l2loopback/0.12.7", "vpoll/0.1")
    ), dk
    assert status(system, "extmod") == dk


def test_e_modules_from_apt_load_in_qemu(
    system: Chroot, trees: dict[str, Any], tmp_path: Path
) -> None:
    """v4l2loopback needs videodev from the kernel's own modules, which the boot test's
    initramfs does not carry: vpoll and acpi_call, as apt installed them."""
    kver = trees["gcc"]["kver"]
    mods = []
    for stem in ("vpoll", "acpi_call"):
        src = system.modules(kver, stem)[0]
        mods.append(Path(shutil.copy(src, tmp_path / src.name)))
    console = boot(Path(trees["gcc"]["vmlinuz"]), mods, trees["busybox"], tmp_path / "qemu")
    check_console(console, kver, list(STEMS[:2]), [])


def test_b_the_guard_refuses_a_kernel_a_critical_module_cannot_follow(
    system: Chroot, trees: dict[str, Any]
) -> None:
    """Issue 25: with [guard] mode = refuse and vpoll critical, apt's DPkg::Pre-Install-Pkgs
    hook preflights 6.12's incoming header packages, vpoll 0.1 does not build (class_create),
    and apt stops before dpkg unpacks anything: dpkg is left clean."""
    new = trees["debian612"]["kver"]
    conf = system.root / "etc/extmod/config.toml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text('[guard]\nmode = "refuse"\ncritical = ["vpoll"]\n')
    out = system.apt(f"install -t bookworm-backports linux-headers-{new}", check=False)
    conf.unlink()
    refused = [line for line in out.splitlines() if "refusing kernel" in line]
    assert len(refused) == 1 and "vpoll/0.1" in refused[0] and "class_create" in refused[0], out
    assert "EXTMOD_GUARD=off" in refused[0]
    assert not system.installed(f"linux-headers-{new}")
    assert not (system.root / "lib/modules" / new).exists()
    assert system.run("dpkg --audit").strip() == ""


def test_b_second_kernel_gets_every_package_from_its_hooks(
    system: Chroot, trees: dict[str, Any]
) -> None:
    """The guard in its default mode (warn): apt goes on, the module that will be missing
    is named before the unpack, and the hooks take what preflight built from the store."""
    new, old = trees["debian612"]["kver"], trees["gcc"]["kver"]
    out = system.apt(f"install -t bookworm-backports linux-headers-{new} 2>&1")  # in order
    warned = [line for line in out.splitlines() if "will be missing" in line]
    assert any("vpoll/0.1" in line and new in line for line in warned), out[-3000:]
    assert out.index("will be missing") < out.index("Unpacking"), out[-3000:]
    assert "acpi-call/1.2.2 for " + new + ": from the build store" in out, out[-3000:]
    assert list(system.root.glob(f"lib/modules/{new}/updates/dkms/acpi_call.ko*")), out[-3000:]
    assert "class_create" in out and "strlcpy" in out, out[-3000:]  # named, not fatal
    dk = status(system, "dkms")
    assert f"acpi-call/1.2.2, {new}, x86_64: installed" in dk, dk
    assert [line for line in dk if old in line] == sorted(
        f"{n}, {old}, x86_64: installed"
        for n in ("acpi-call/1.2.2", "v4l2loopback/0.12.7", "vpoll/0.1")
    )
    assert status(system, "extmod") == dk


def test_c_remove_purge_reinstall_upgrade(system: Chroot, trees: dict[str, Any]) -> None:
    kvers = (trees["gcc"]["kver"], trees["debian612"]["kver"])
    system.apt("remove vpoll-dkms")
    assert not any(system.modules(k, "vpoll") for k in kvers)
    assert not any(line.startswith("vpoll/") for line in status(system, "dkms"))
    assert not (system.root / "var/lib/extmod/packages/vpoll").exists()
    system.apt("install vpoll-dkms")
    assert system.modules(kvers[0], "vpoll")
    system.apt("purge vpoll-dkms")
    assert not any(system.modules(k, "vpoll") for k in kvers)
    assert not any(line.startswith("vpoll/") for line in status(system, "dkms"))

    # dh_dkms's prerm removes the package on --reinstall (dkms remove --all), and its
    # postinst adds and builds it again: the same single version ends installed. The
    # build store makes that "builds" a take (issue 23): with a gcc-12 that fails when
    # asked to compile, each kernel's module comes from the store, the same bytes.
    before = status(system, "dkms")
    first = {k: _digest(system.modules(k, "acpi_call")[0]) for k in kvers}
    with _no_compiler(system):
        out = system.apt("install --reinstall acpi-call-dkms")
    assert status(system, "dkms") == before
    assert all(len(system.modules(k, "acpi_call")) == 1 for k in kvers)
    assert out.count("from the build store") == len(kvers), out[-3000:]
    assert {k: _digest(system.modules(k, "acpi_call")[0]) for k in kvers} == first

    out = system.apt("install -t bookworm-backports v4l2loopback-dkms")
    dk = status(system, "dkms")
    v4l = [line for line in dk if line.startswith("v4l2loopback/")]
    assert v4l == [f"v4l2loopback/0.13.2, {k}, x86_64: installed" for k in kvers], (
        v4l,
        out[-3000:],
    )
    assert all(len(system.modules(k, "v4l2loopback")) == 1 for k in kvers)


GCC = "/usr/bin/x86_64-linux-gnu-gcc-12"
# Answers what the toolchain lookup asks (the version, under its own name), fails any compile.
NO_COMPILE = f"""#!/bin/bash
case "$1" in
--version|-v|-dumpversion|-dumpfullversion) exec -a "$0" {GCC}.real "$@";;
esac
echo "no compile expected: $0 $*" >&2
exit 1
"""


@contextlib.contextmanager
def _no_compiler(c: Chroot) -> Iterator[None]:
    """The chroot's gcc-12 replaced by NO_COMPILE for the block."""
    real = c.root / GCC.lstrip("/")
    real.rename(f"{real}.real")
    real.write_text(NO_COMPILE)
    real.chmod(0o755)
    try:
        yield
    finally:
        real.unlink()
        Path(f"{real}.real").rename(real)


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_d_replacing_debian_dkms_rebuilds_nothing(
    trees: dict[str, Any], deb: Path, tmp_path: Path
) -> None:
    c = Chroot(trees, tmp_path / "root")
    try:
        kver = trees["gcc"]["kver"]
        c.apt(f"install dkms linux-headers-{kver}")
        c.apt("install vpoll-dkms")
        assert c.installed("dkms")
        ko = c.modules(kver, "vpoll")
        assert len(ko) == 1 and (c.root / f"var/lib/dkms/vpoll/0.1/{kver}").is_dir()
        digest, mtime = _digest(ko[0]), ko[0].stat().st_mtime_ns
        shutil.copy(deb, c.root / "tmp")
        out = c.apt(f"install /tmp/{deb.name}")
        assert not c.installed("dkms") and c.installed("extmod") and c.installed("vpoll-dkms")
        assert "imported: installed" in out, out[-3000:]
        assert "building" not in out, out[-3000:]
        ko = c.modules(kver, "vpoll")
        assert len(ko) == 1 and (_digest(ko[0]), ko[0].stat().st_mtime_ns) == (digest, mtime)
        assert status(c, "dkms") == [f"vpoll/0.1, {kver}, x86_64: installed"]
        # DKMS's own record moved aside; /var/lib/dkms is now the view of extmod's state
        assert (c.root / "var/lib/extmod/dkms-imported/vpoll").is_dir()
        view = c.root / "var/lib/dkms"
        assert (view / ".extmod-view").is_file()
        module = view / f"vpoll/0.1/{kver}/x86_64/module"
        assert module.is_symlink() and os.readlink(module).startswith("/var/lib/extmod/")
        assert os.readlink(view / f"vpoll/kernel-{kver}-x86_64") == f"0.1/{kver}/x86_64"
        # the next apt operations are extmod's
        out = c.apt("install --reinstall vpoll-dkms")
        assert "Building for" in out and "Deleting module vpoll/0.1" in out, out[-3000:]
        out = c.apt("install acpi-call-dkms")
        assert "Building for" in out and c.modules(kver, "acpi_call"), out[-3000:]
        assert (
            status(c, "extmod")
            == status(c, "dkms")
            == sorted(
                [
                    f"vpoll/0.1, {kver}, x86_64: installed",
                    f"acpi-call/1.2.2, {kver}, x86_64: installed",
                ]
            )
        )
    finally:
        c.remove()
