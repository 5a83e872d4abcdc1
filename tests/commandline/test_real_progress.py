"""The live progress view: `extmod autoinstall` in a real terminal (tmux), captured while it
builds against Debian's real headers; and plain lines when stderr is not a terminal.

The package is examples/dkms-pair with `sleep 3 &&` before its MAKE line, so that the
build is slow enough to be seen mid-way on any machine."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, REPO, extmod, make_root

pytestmark = pytest.mark.slow


def _slow_pair(dest: Path, name: str) -> Path:
    src = dest / name
    subprocess.run(["cp", "-a", str(EXAMPLES / "dkms-pair"), str(src)], check=True)
    conf = src / "dkms.conf"
    text = conf.read_text().replace('MAKE[0]="', 'MAKE[0]="sleep 3 && ')
    if name != "extmod-pair":  # its own package, installing modules of its own names
        text = text.replace('PACKAGE_NAME="extmod-pair"', f'PACKAGE_NAME="{name}"')
        text += 'DEST_MODULE_NAME[0]="hello2"\nDEST_MODULE_NAME[1]="twofile2"\n'
    conf.write_text(text)
    return src


def _setup(
    tmp: Path, trees: dict[str, Any], names: tuple[str, ...] = ("extmod-pair",)
) -> tuple[Path, str]:
    kver = trees["gcc"]["kver"]
    root = make_root(tmp / "root", kver, trees["gcc"]["build"])
    for name in names:
        res = extmod(["--root", root, "add", _slow_pair(tmp, name)])
        assert res.rc == 0, res.err
    return root, kver


def test_live_view_under_tmux(tmp_path: Path, trees: dict[str, Any]) -> None:
    root, kver = _setup(tmp_path, trees, ("extmod-pair", "second-pair"))
    sock = f"extmod-test-{os.getpid()}"
    cmd = (
        f"cd {shlex.quote(str(tmp_path))} && PYTHONPATH={shlex.quote(str(REPO / 'src'))} "
        f"{shlex.quote(sys.executable)} -m extmod --root {shlex.quote(str(root))} "
        f"autoinstall -k {kver} -j 2; echo EXIT=$?; sleep 120"
    )
    tmux = ["tmux", "-L", sock]
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "150", "-y", "50", "-e", "TERM=xterm-256color", cmd],
        check=True,
    )
    captures: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            shot = subprocess.run(
                [*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=True
            ).stdout
            captures.append(shot)
            if "EXIT=" in shot:
                break
            time.sleep(0.3)
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    final = captures[-1]
    assert "EXIT=0" in final, final
    running = re.compile(
        rf"^  building\s+extmod-pair/1\.0 for {re.escape(kver)}\s+"
        rf"(\d+\.\d)s$",
        re.M,
    )
    elapsed = [float(m.group(1)) for shot in captures for m in running.finditer(shot)]
    assert len(set(elapsed)) >= 3, captures  # the view was seen mid-build, ticking
    assert max(elapsed) >= 2.0
    # Both packages building at once (-j 2), each on its own line, under one summary.
    both = [shot for shot in captures if "[0/2 done, 2 running, 0 waiting]" in shot]
    assert both, captures
    for name in ("extmod-pair", "second-pair"):
        assert re.search(
            rf"^  \w+\s+{name}/1\.0 for {re.escape(kver)}\s+\d+\.\ds$", both[-1], re.M
        ), both[-1]
    # At the end the live block is gone: the plain record and the results stay.
    assert not re.search(r"^\[\d+/\d+ done", final, re.M), final
    for name in ("extmod-pair", "second-pair"):
        assert f"{name}/1.0, {kver}: installed (2 modules)" in final
        assert f"built {name}/1.0 for {kver}" in final


def test_plain_lines_when_not_a_terminal(tmp_path: Path, trees: dict[str, Any]) -> None:
    root, kver = _setup(tmp_path, trees)
    res = extmod(["--root", root, "autoinstall", "-k", kver])
    assert res.rc == 0, res.err
    assert "\x1b[" not in res.err and "done," not in res.err
    assert f"built extmod-pair/1.0 for {kver}" in res.err
