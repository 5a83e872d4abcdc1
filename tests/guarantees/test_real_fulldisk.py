"""A full disk never costs a module (issue 22), on Debian's 6.1 headers with gcc: the
module tree's ``updates`` dir is a 2 MiB tmpfs (in a private mount namespace) holding
version 1.0 of a package; version 2.0's module is 3 MiB. Installing 2.0 fails with exit 7
and one line saying 1.0 stays, and 1.0 is still installed, byte for byte, and loadable as
before (modules.dep names it). Before the fix the old version was uninstalled first and
the disk then refused the new one: neither was left."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, make_root

pytestmark = pytest.mark.slow


def _package(root: Path, version: str, pad: int) -> None:
    src = root / "usr/src" / f"big-{version}"
    src.mkdir(parents=True)
    (src / "dkms.conf").write_text(
        f'PACKAGE_NAME="big"\nPACKAGE_VERSION="{version}"\nBUILT_MODULE_NAME[0]="big"\n'
        'DEST_MODULE_LOCATION[0]="/extra"\nAUTOINSTALL="yes"\n'
    )
    (src / "Kbuild").write_text("obj-m := big.o\n")
    (src / "big.c").write_text(
        '#include <linux/module.h>\nMODULE_LICENSE("GPL");\n'
        f"static char pad[{pad}] = {{1}};\nchar *big_pad = pad;\nEXPORT_SYMBOL(big_pad);\n"
    )


def test_an_upgrade_on_a_full_disk_keeps_the_installed_version(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    _package(root, "1.0", 16)
    _package(root, "2.0", 3 << 20)
    updates = root / "lib/modules" / kver / "updates"
    updates.mkdir()
    ko = updates / "dkms/big.ko"
    ext = f"{shlex.quote(sys.executable)} -m extmod --root {shlex.quote(str(root))}"
    script = f"""
set -u
mount -t tmpfs -o size=2m extmod-full {shlex.quote(str(updates))}
{ext} install big/1.0 -k {kver} >/dev/null 2>&1 || exit 90
sha256sum {shlex.quote(str(ko))} | cut -d' ' -f1
{ext} add big/2.0 >/dev/null 2>&1 || exit 91
{ext} install big/2.0 -k {kver} >/dev/null 2>{shlex.quote(str(tmp_path / "err"))}
echo "rc=$?"
sha256sum {shlex.quote(str(ko))} | cut -d' ' -f1
{ext} status -k {kver}
ls -a {shlex.quote(str(ko.parent))}
"""
    res = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO / "src"),
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = res.stdout.splitlines()
    assert res.returncode == 0, res.stdout + res.stderr
    before, rc, after = out[0], out[1], out[2]
    err = (tmp_path / "err").read_text()
    assert rc == "rc=7", (rc, err)
    assert "No space left on device" in err and "big/1.0 stays installed" in err, err
    assert len(before) == 64 and after == before  # the same 1.0 module, in place
    assert any(line.startswith("big/1.0") and "installed" in line for line in out[3:]), out
    assert not any("extmod-tmp" in line for line in out), out  # no staged copy left
    dep = (root / "lib/modules" / kver / "modules.dep").read_text()
    assert "updates/dkms/big.ko:" in dep
