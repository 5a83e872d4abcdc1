"""The parity lanes' own harness (issue 32): a command of theirs is stopped only when it has
been silent too long, and then one line names the step; a slow command that keeps writing
is never stopped (a loaded machine is slow, not wrong)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import parity

ENV = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}


def test_a_silent_step_is_named_in_one_line(tmp_path: Path) -> None:
    log = tmp_path / "log"
    start = time.monotonic()
    with pytest.raises(RuntimeError) as e:
        parity.in_namespace("0.0.0-x", "/nonexistent", ["sleep", "30"], ENV, log, quiet=1)
    assert time.monotonic() - start < 10
    line = str(e.value)
    assert "\n" not in line and line.startswith("sleep 30: nothing written for 1 s"), line


def test_a_slow_step_that_writes_is_waited_for(tmp_path: Path) -> None:
    log = tmp_path / "log"
    script = "for i in 1 2 3 4 5 6; do echo $i; sleep 0.5; done"
    rc = parity.in_namespace("0.0.0-x", "/nonexistent", ["sh", "-c", script], ENV, log, quiet=1)
    assert rc == 0 and log.read_text().split() == ["1", "2", "3", "4", "5", "6"]
