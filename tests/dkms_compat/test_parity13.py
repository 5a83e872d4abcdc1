"""Parity on Debian 13 (issue 21): trixie's versions of the parity packages, built by
Debian's dkms 3.2.2 and by extmod (its .deb, providing dkms 3.2.2, on trixie's Python
3.13) in trixie chroots, for trixie's 6.12 and trixie-backports' 7.3 headers (gcc-14).
The table is printed (pytest -s) and quoted in the README (tests/parity13-runs.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import parity
import parity13
from conftest import REPO, LaneJob

pytestmark = pytest.mark.slow

RECORDED = Path(parity13.__file__).with_name("parity13-runs.json")


def start_parity13(trees: dict[str, Any], work: Path) -> list[str | Path]:
    """The lane job: extmod's .deb built from this checkout (scripts/deb.sh), then both
    chroots (dkms's runs kept by their inputs), the runs as JSON."""
    script = (
        'set -e; bash "$1/scripts/deb.sh" "$2/dist" >"$2/deb.log" 2>&1; '
        'exec "$3" "$1/tests/parity13.py" --json "$2/runs.json" "$2"/dist/extmod_*_all.deb "$2/w"'
    )
    return ["bash", "-c", script, "parity13", REPO, work, sys.executable]


@pytest.mark.lane("start_parity13")
def test_parity_on_debian_13(lane_job: LaneJob) -> None:
    assert lane_job.wait(timeout=3600) == 0, lane_job.log()[-3000:]
    runs = parity.from_json(json.loads((lane_job.work / "runs.json").read_text()))
    print("\n" + parity.table(runs, parity13.PACKAGES))
    assert [(r.kernel, r.tool) for r in runs] == [
        (k, t) for k in parity13.KERNELS for t in ("dkms", "extmod")
    ]
    for dkms_run, ext_run in zip(runs[0::2], runs[1::2], strict=True):
        assert ext_run.kver.startswith("6.12." if "6.12" in ext_run.kernel else "7.")
        for p in parity13.PACKAGES:
            d, e = dkms_run.cells[p], ext_run.cells[p]
            where = f"{p} on {dkms_run.kver}"
            if d.status == "ok":
                assert e.status == "ok", f"{where}: dkms builds it, extmod: {e.reason}"
                assert parity.uncompressed(e.paths) == parity.uncompressed(d.paths), where
            if d.status == "skip":
                assert e.status == "skip", f"{where}: dkms skips it, extmod: {e.status}"
            if e.status == "fail":  # one line: the first error and the log
                assert "\n" not in e.reason and "(log: " in e.reason, (where, e.reason)
    # Debian 13's kernels compress with xz: so does every module extmod installed
    assert all(
        path.endswith(".ko.xz") for r in runs[1::2] for c in r.cells.values() for path in c.paths
    )
    changed = parity.outcome_changes(runs, parity.recorded(RECORDED))
    assert not changed, (
        f"outcomes differ from {RECORDED.name} (the README's table): {changed}; record "
        f"again: python tests/parity13.py --json tests/{RECORDED.name} DEB DIR, then "
        f"parity.write_readme(Path('tests/{RECORDED.name}'))"
    )
