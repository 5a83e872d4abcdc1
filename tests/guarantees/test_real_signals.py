"""A signal that ends extmod ends every process it started: the dkms.conf evaluation, the
build (make, its compilers, a MAKE line's own children), and an install's scripts.

extmod is started in a session of its own and signalled alone (``kill PID``, not its
group): the stricter case, as when systemd or apt's stopped frontend signals only the
process it knows. Each child is found by a number only this test uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, REPO, extmod, make_root

pytestmark = pytest.mark.slow

CONF = """PACKAGE_NAME="{name}"
PACKAGE_VERSION="1.0"
BUILT_MODULE_NAME[0]="hello"
DEST_MODULE_LOCATION[0]="/extra"
"""


def _procs_matching(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in args and state != "Z" and cmdline.parent.name != str(os.getpid()):
            found.append(f"{cmdline.parent.name}: {args.strip()}")
    return found


def _signal_when_running(argv: list[str | Path], marker: str, sig: int) -> int:
    """Start extmod, wait until a process whose command line has ``marker`` runs, send
    ``sig`` to extmod alone; extmod's exit status."""
    env = {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "HOME": "/root",
        "PYTHONPATH": str(REPO / "src"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "extmod", *map(str, argv)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not _procs_matching(marker):
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, f"{marker} never started"
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.stdout is not None
    proc.stdout.close()
    return rc


def _package(tmp: Path, name: str, extra: str) -> Path:
    src = tmp / name
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(CONF.format(name=name) + extra)
    return src


def _no_leftover(marker: str) -> None:
    time.sleep(0.5)
    left = _procs_matching(marker)
    for line in left:  # never leave them to the rest of the suite
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert left == [], "processes outlived extmod"


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"]
)
def test_dkms_conf_evaluation_ends_with_extmod(
    trees: dict[str, Any], tmp_path: Path, sig: int
) -> None:
    root = make_root(tmp_path / "root", trees["gcc"]["kver"], trees["gcc"]["build"])
    marker = "extmod-signal-6171"
    src = _package(tmp_path, "looper", f"while :; do : {marker}; done\n")
    rc = _signal_when_running(["--root", root, "add", src], str(src / "dkms.conf"), sig)
    assert rc in (-sig, 130), rc  # killed by the signal; SIGINT: "interrupted", 130
    _no_leftover(str(src / "dkms.conf"))
    assert not (root / "var/lib/extmod/packages/looper").exists()


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"]
)
def test_build_ends_with_extmod(trees: dict[str, Any], tmp_path: Path, sig: int) -> None:
    """A MAKE line whose make runs real compiles while its own background child sleeps."""
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    src = _package(
        tmp_path,
        "slowbuild",
        "MAKE[0]='sleep 6172 & make -C $kernel_source_dir "
        "M=$dkms_tree/$module/$module_version/build && wait'\n",
    )
    rc = _signal_when_running(["--root", root, "build", src, "-k", kver], "sleep 6172", sig)
    assert rc in (-sig, 130), rc
    _no_leftover("sleep 6172")
    _no_leftover(str(root))  # make and the compilers ran with the root in their argv
    # The next command finds a consistent state: added, nothing built.
    r = extmod(["--root", root, "status"])
    assert r.rc == 0 and r.out.strip() == "slowbuild/1.0: added", r.out


def test_install_script_ends_with_extmod(trees: dict[str, Any], tmp_path: Path) -> None:
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    src = _package(tmp_path, "slowinst", 'POST_INSTALL="wait.sh"\n')
    (src / "wait.sh").write_text("#!/bin/sh\nsleep 6173\n")
    (src / "wait.sh").chmod(0o755)
    rc = _signal_when_running(
        ["--root", root, "install", src, "-k", kver], "sleep 6173", signal.SIGTERM
    )
    assert rc == -signal.SIGTERM, rc
    _no_leftover("sleep 6173")
    r = extmod(["--root", root, "status", "-k", kver])
    assert r.rc == 0, r.err
