"""extmod's /usr/lib/dkms/common.postinst (issue 12), run as dh_dkms's postinst runs it
(``common.postinst NAME VERSION /usr/share/NAME-dkms "" CONFIGURED-VERSION``) on a staged
root that holds three kernels: Debian's 6.1 headers, Debian's 6.12 headers from
bookworm-backports, and a kernel whose headers are not installed. The real vpoll-dkms of
the archive is built for both kernels with headers in one run (DKMS builds for the
running and the newest kernel only), a package that fails to compile leaves the postinst
at exit 0 with its first error and log named, /etc/dkms/no-autoinstall turns it off, and
a package shipped as a prebuilt DKMS tarball is installed without a compile."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import copy_example, dkms, make_root, postinst

pytestmark = pytest.mark.slow


@pytest.fixture
def root(trees: dict[str, Any], tmp_path: Path) -> Path:
    r = tmp_path / "root"
    make_root(
        r,
        trees["gcc"]["kver"],
        trees["gcc"]["build"],
        str(Path("/lib/modules", trees["gcc"]["kver"], "source").resolve()),
    )
    d = trees["debian612"]
    make_root(r, d["kver"], d["build"], d["source"])
    (r / "lib/modules/6.1.0-99-amd64/kernel").mkdir(parents=True)  # an image, no headers
    (r / "usr/src").mkdir(parents=True)
    return r


def test_builds_for_every_kernel_with_headers(root: Path) -> None:
    copy_example("dkms-pair", root / "usr/src").rename(root / "usr/src/extmod-pair-1.0")
    res = postinst(root, "extmod-pair", "1.0", "/usr/share/extmod-pair-dkms", "", "")
    assert res.returncode == 0, res.stdout + res.stderr
    kvers = sorted(d.parent.name for d in (root / "lib/modules").glob("*/build"))
    assert len(kvers) == 2
    for kver in kvers:
        assert "hello.ko" in (root / "lib/modules" / kver / "modules.dep").read_text()
    st = dkms(root, "status", "-m", "extmod-pair", "-v", "1.0").stdout.splitlines()
    assert st == [f"extmod-pair/1.0, {k}, x86_64: installed" for k in kvers], st
    # apt-get install --reinstall runs it again: nothing is rebuilt, one version installed
    again = postinst(root, "extmod-pair", "1.0", "/usr/share/extmod-pair-dkms", "", "1.0")
    assert again.returncode == 0 and again.stdout.count("up to date") == 2, again.stdout
    assert "building" not in again.stderr, again.stderr
    assert dkms(root, "status").stdout.splitlines() == st


def test_failed_build_keeps_the_package_configured(trees: dict[str, Any], root: Path) -> None:
    """bookworm's vpoll-dkms 0.1 builds on 6.1; on 6.12 it does not (class_create lost an
    argument in 6.4): 6.1 gets it, 6.12's error is named, the postinst exits 0."""
    shutil.copytree(trees["dkms"]["packages"]["vpoll-dkms"]["src"], root / "usr/src/vpoll-0.1")
    res = postinst(root, "vpoll", "0.1", "/usr/share/vpoll-dkms", "", "")
    assert res.returncode == 0, res.stdout + res.stderr
    new = trees["debian612"]["kver"]
    assert f"vpoll/0.1 for {new}: NOT installed" in res.stdout, res.stdout
    assert "class_create" in res.stdout and "(log: " in res.stdout, res.stdout
    assert dkms(root, "status").stdout.splitlines() == [
        f"vpoll/0.1, {trees['gcc']['kver']}, x86_64: installed"
    ]


def test_no_autoinstall_switch_and_missing_arguments(root: Path) -> None:
    (root / "etc/dkms").mkdir(parents=True)
    (root / "etc/dkms/no-autoinstall").write_text("")
    res = postinst(root, "vpoll", "0.1", "/usr/share/vpoll-dkms", "", "")
    assert (res.returncode, res.stdout) == (0, "autoinstall for dkms modules has been disabled.\n")
    assert not (root / "var/lib/extmod/packages").exists()
    assert postinst(root, "vpoll").returncode == 1


def test_prebuilt_tarball_installs_without_a_compile(
    trees: dict[str, Any], root: Path, tmp_path: Path
) -> None:
    # a binaries-only DKMS tarball for 6.1 made by extmod's dkms in another root
    other = tmp_path / "other"
    make_root(other, trees["gcc"]["kver"], trees["gcc"]["build"])
    shutil.copytree(trees["dkms"]["packages"]["vpoll-dkms"]["src"], other / "usr/src/vpoll-0.1")
    kver = trees["gcc"]["kver"]
    assert dkms(other, "install", "vpoll/0.1", "-k", kver).returncode == 0
    share = root / "usr/share/vpoll-dkms"
    share.mkdir(parents=True)
    made = dkms(
        other,
        "mktarball",
        "vpoll/0.1",
        "-k",
        kver,
        "--binaries-only",
        f"--archive={share}/vpoll-0.1.dkms.tar.gz",
    )
    assert made.returncode == 0, made.stderr
    res = postinst(root, "vpoll", "0.1", str(share), "", "")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "building vpoll" not in res.stderr, res.stderr
    assert list((root / "lib/modules" / kver / "updates/dkms").glob("vpoll.ko*"))
    # 6.12 has no prebuilt modules and the package no source: named, not fatal
    assert f"vpoll/0.1 for {trees['debian612']['kver']}: skipped (a binaries-only" in res.stdout, (
        res.stdout
    )
    assert os.path.exists(root / "var/lib/extmod/binaries-only/vpoll-0.1/dkms.conf")
