"""The benchmark script runs and prints its ratios (goals live in the benchmark, not here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_thinlto_rebuild_benchmark_prints_ratios(trees: dict[str, str]) -> None:
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench/thinlto_rebuild.py"),
            "--rounds",
            "1",
            "--functions",
            "10",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    ratios = re.findall(r"^ratio .*: (\d+\.\d+)x$", res.stdout, re.M)
    assert len(ratios) == 3 and all(float(r) > 0 for r in ratios), res.stdout


def test_side_by_side_benchmark_prints_its_table(trees: dict[str, str], tmp_path: Path) -> None:
    """bench/compare.py end to end on a small synthetic set (c, d); the full run (README
    "Benchmark") adds the twelve Debian packages, the ThinLTO case and the compile cache
    across an ABI update and across hosts (f, g), and zfs and nvidia the same two ways (h)."""
    work = Path("/var/tmp") / f"extmod-bench-{tmp_path.name}"
    try:
        res = subprocess.run(
            [
                sys.executable,
                str(REPO / "bench/compare.py"),
                "--skip",
                "a,e,f,h,g2,rz",
                "--synthetic",
                "2,1",
                "--work",
                str(work),
            ],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        rows = {
            line.split("|")[1].strip()[:1]: line
            for line in res.stdout.splitlines()
            if line.startswith("| ")
        }
        assert "2 versions x 4 kernels (8 / 8 installed)" in rows["c"], res.stdout
        assert "of 12 / 12 pairs (left: 0 / 0)" in rows["d"], res.stdout
        assert re.search(r"\| \d+\.\d+ MB \|", rows["p"]), res.stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)
