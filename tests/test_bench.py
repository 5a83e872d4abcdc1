"""The benchmark script runs and prints its ratios (goals live in the benchmark, not here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_thinlto_rebuild_benchmark_prints_ratios(trees: dict[str, str]) -> None:
    res = subprocess.run([sys.executable, str(REPO / "bench/thinlto_rebuild.py"), "--rounds",
                          "1", "--functions", "10"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ratios = re.findall(r"^ratio .*: (\d+\.\d+)x$", res.stdout, re.M)
    assert len(ratios) == 3 and all(float(r) > 0 for r in ratios), res.stdout
