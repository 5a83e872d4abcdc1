"""Issue 16.4, ``extmod export``: prebuilt module packages. A package's modules for
Debian's 6.12 kernel (as extmod installs them: signed, xz-compressed, in updates/dkms)
become a .deb, published in a local apt repository (apt-ftparchive, served over HTTP on
127.0.0.1, stopped by its PID); apt installs it into a Debian chroot that has no compiler
(its postinst runs depmod), the modules load in qemu on that kernel's vmlinuz, and apt
removes it cleanly. On a machine with extmod, the package shows as installed "from package"
and autoinstall does not build it again."""

from __future__ import annotations

import lzma
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chroot import Chroot
from conftest import EXAMPLES, boot, check_console, extmod, free_port, make_root

pytestmark = [pytest.mark.slow, pytest.mark.disk]


@pytest.fixture
def exported(trees: dict[str, Any], tmp_path: Path) -> tuple[Path, Path, str]:
    """(the staged root the modules were built in, the .deb, the kernel release)."""
    d = trees["debian612"]
    root = make_root(tmp_path / "root", d["kver"], d["build"], d["source"])
    out = tmp_path / "out"
    r = extmod(
        ["--root", root, "export", EXAMPLES / "dkms-pair", "-k", d["kver"], "-o", out],
        timeout=600,
    )
    assert r.rc == 0, r.err
    r = extmod(
        ["--root", root, "-q", "export", "extmod-pair", "-k", d["kver"], "-o", out,
         "--format", "tar"],
    )  # fmt: skip
    assert r.rc == 0, r.err
    (deb,) = out.glob("*.deb")
    assert deb.name == f"extmod-pair-modules-{d['kver']}_1.0_amd64.deb"
    (tar,) = out.glob("*.tar.gz")
    listing = subprocess.run(["tar", "-tzf", tar], capture_output=True, text=True).stdout
    assert f"lib/modules/{d['kver']}/updates/dkms/hello.ko.xz" in listing
    return root, deb, d["kver"]


@pytest.fixture
def repo(exported: tuple[Path, Path, str], tmp_path: Path) -> Iterator[str]:
    """A flat apt repository of the .deb, served over HTTP on 127.0.0.1."""
    served = tmp_path / "repo"
    served.mkdir()
    shutil.copy(exported[1], served)
    packages = subprocess.run(
        ["apt-ftparchive", "packages", "."], cwd=served, capture_output=True, check=True
    ).stdout
    (served / "Packages").write_bytes(packages)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
         "--directory", str(served)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/Packages", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "no HTTP server"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_apt_installs_the_package_without_a_compiler_and_it_loads(
    trees: dict[str, Any], exported: tuple[Path, Path, str], repo: str, tmp_path: Path
) -> None:
    kver = exported[2]
    c = Chroot(trees, tmp_path / "chroot")
    try:
        c.apt("purge gcc gcc-12 cpp cpp-12 make")
        c.run("! command -v gcc && ! command -v cc && ! command -v make")
        c.run(f"echo 'deb [trusted=yes] {repo} ./' > /etc/apt/sources.list.d/extmod-export.list")
        c.apt("update")
        c.apt(f"install extmod-pair-modules-{kver}")
        assert c.installed(f"linux-image-{kver}")  # its Depends
        mods = c.root / "lib/modules" / kver / "updates/dkms"
        assert sorted(p.name for p in mods.iterdir()) == ["hello.ko.xz", "twofile.ko.xz"]
        dep = (c.root / "lib/modules" / kver / "modules.dep").read_text()
        assert "updates/dkms/hello.ko.xz:" in dep  # the postinst's depmod
        # The modules as apt put them, loaded on that kernel's own vmlinuz.
        raw = []
        for f in sorted(mods.iterdir()):
            out = tmp_path / f.name.removesuffix(".xz")
            out.write_bytes(lzma.decompress(f.read_bytes()))
            raw.append(out)
        console = boot(Path(trees["debian612"]["vmlinuz"]), raw, trees["busybox"], tmp_path / "vm")
        check_console(console, kver, ["hello", "twofile"], ["extmod-twofile: loaded, answer 42"])

        c.apt(f"remove extmod-pair-modules-{kver}")
        assert not c.installed(f"extmod-pair-modules-{kver}")
        assert not (mods / "hello.ko.xz").exists() and not (mods / "twofile.ko.xz").exists()
        assert "hello" not in (c.root / "lib/modules" / kver / "modules.dep").read_text()
        assert not list((c.root / "usr/share/extmod/prebuilt").glob("*.json"))
    finally:
        c.remove()


def test_extmod_sees_the_package_and_does_not_rebuild(
    trees: dict[str, Any], exported: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """A second machine with extmod: the .deb unpacked as dpkg lays it out, the package
    registered (as its -dkms package would): status says "from package", autoinstall
    skips it and builds nothing."""
    d = trees["debian612"]
    _, deb, kver = exported
    other = make_root(tmp_path / "other", kver, d["build"], d["source"])
    subprocess.run(["dpkg-deb", "-x", str(deb), str(other)], check=True)
    assert extmod(["--root", other, "-q", "add", EXAMPLES / "dkms-pair"]).rc == 0
    st = extmod(["--root", other, "status"])
    assert st.out.strip() == (
        f"extmod-pair/1.0, {kver}, x86_64: installed from package extmod-pair-modules-{kver}"
    ), st.out
    r = extmod(["--root", other, "--json", "autoinstall", "-k", kver])
    assert r.rc == 0, r.err
    assert [(o["action"], o["detail"]) for o in r.json()["outcomes"]] == [
        ("skipped", f"installed from package extmod-pair-modules-{kver}")
    ]
    assert not (other / "var/lib/extmod/build/extmod-pair").exists()
