"""The Arch PKGBUILD and the RPM spec (issue 12), checked with the real tools where this
Debian machine has them: rpmbuild (Debian's rpm) builds the .rpm and rpm installs it into a
scratch root; makepkg (Debian's makepkg, as an unprivileged user) builds the Arch package.
Each answers to dkms (Provides dkms = 3.2.2, Conflicts dkms) and its dkms runs. On paper
only: dependency resolution (rpmbuild --nodeps, makepkg --nodeps: Debian has no Fedora or
Arch package database), pacman installing the package, the scriptlets on a real system."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import NOBODY, REPO

pytestmark = pytest.mark.slow

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def source_tarball(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = dest / "extmod-0.1.0.tar.gz"
    subprocess.run(
        ["bash", "-c", f"tar -c -T - --transform 's,^,extmod-0.1.0/,' | gzip -n > {out}"],
        input=files,
        cwd=REPO,
        text=True,
        check=True,
    )
    return out


def runs_dkms(root: Path) -> None:
    site = next(root.glob("usr/lib/python3*/site-packages"))
    res = subprocess.run(
        [sys.executable, str(root / "usr/bin/dkms"), "--version"],
        env={**ENV, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and res.stdout == "dkms-3.2.2\n", res


def test_rpm_spec_builds_and_installs(tmp_path: Path) -> None:
    top = tmp_path / "rpm"
    (top / "SOURCES").mkdir(parents=True)
    source_tarball(top / "SOURCES")
    res = subprocess.run(
        [
            "rpmbuild",
            "-bb",
            "--nodeps",
            "--define",
            f"_topdir {top}",
            str(REPO / "packaging/rpm/extmod.spec"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "warning" not in res.stderr.lower(), res.stderr
    rpm = next(top.glob("RPMS/noarch/extmod-0.1.0-*.noarch.rpm"))
    q = subprocess.run(
        ["rpm", "-qp", "--provides", "--conflicts", str(rpm)],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "dkms = 3.2.2" in q and "dkms" in q, q
    root = tmp_path / "root"
    subprocess.run(
        ["rpm", "--root", str(root), "-i", "--nodeps", str(rpm)],
        env=ENV,
        check=True,
        capture_output=True,
    )
    assert (root / "usr/lib/kernel/install.d/40-extmod.install").is_file()
    runs_dkms(root)


def test_pkgbuild_builds(tmp_path: Path) -> None:
    # makepkg refuses root: it runs as nobody, in a dir nobody can reach (not under the
    # 0700 pytest tmp)
    work = Path(tempfile.mkdtemp(prefix="extmod-makepkg-", dir="/var/tmp"))
    try:
        _makepkg(work, tmp_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _makepkg(work: Path, tmp_path: Path) -> None:
    (work / "PKGBUILD").write_bytes((REPO / "packaging/arch/PKGBUILD").read_bytes())
    source_tarball(work)
    os.chmod(work, 0o755)
    for p in [work, *work.iterdir()]:
        os.chown(p, NOBODY, NOBODY)
    # PACMAN=true: with --nodeps makepkg never asks pacman anything
    res = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "makepkg",
            "--nodeps",
            "--noconfirm",
        ],
        cwd=work,
        env={**ENV, "HOME": str(work), "PACMAN": "true"},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    pkg = next(work.glob("extmod-0.1.0-1-any.pkg.tar*"))
    info = subprocess.run(
        ["bsdtar", "-xOf", str(pkg), ".PKGINFO"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "provides = dkms=3.2.2" in info and "conflict = dkms" in info, info
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["bsdtar", "-xf", str(pkg), "-C", str(root)], check=True)
    assert (root / "usr/share/libalpm/hooks/70-extmod-install.hook").is_file()
    runs_dkms(root)
