"""Issue 33: both README commands work on a fresh Debian 13 machine, not only on Debian 12.
A trixie chroot made from the archive gets this checkout by git clone and runs
``bash scripts/demo.sh`` (the main job: examples/dkms-pair built for trixie's own 6.12
headers with its gcc-14, signed, xz-compressed, installed in a staging root, then removed)
and ``bash scripts/test.sh --fast`` (the fast suite, on trixie's Python 3.13), each
installing what it needs itself (tests/host13.py, started with the session as a lane
job). Both must end 0; the demo must have installed and removed the package, and the fast
suite's closing line must count no failure. Their wall times are printed (pytest -s) and
quoted in the README."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import host13
from conftest import LaneJob

pytestmark = [pytest.mark.slow, pytest.mark.disk]


def start_host13(trees: dict[str, Any], work: Path) -> list[str | Path]:
    return [sys.executable, host13.__file__, work]


@pytest.mark.lane("start_host13")
def test_the_readme_commands_on_a_fresh_debian_13(lane_job: LaneJob) -> None:
    assert lane_job.wait(timeout=3600) == 0, lane_job.log()[-3000:]
    result = json.loads((lane_job.work / "result.json").read_text())
    for name in ("demo", "fast"):
        run = result.get(name)
        assert run is not None, f"{name} did not run: {result}"
        print(f"\nDebian 13: {run['command']}: exit {run['rc']}, {run['seconds']} s")
        assert run["rc"] == 0, f"{run['command']} ended {run['rc']}:\n{run['tail']}"
    demo = result["demo"]["tail"]
    assert re.search(r"extmod-pair/1\.0, 6\.12\.\S+\+deb13-amd64, x86_64: installed", demo), demo
    assert "removed extmod-pair/1.0" in demo, demo
    closing = result["fast"]["tail"].splitlines()[-1]
    assert re.search(r"\d+ passed", closing) and "failed" not in closing, closing
    assert "error" not in closing, closing
