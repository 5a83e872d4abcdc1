"""DKMS 3.2.2's own ``run_test.sh``, the whole suite, against extmod's ``dkms`` (issues 33
and 35): Debian 13's dkms source package, in a fresh Debian 13 chroot with extmod's .deb
in dkms's place (tests/dkms_suite.py, started with the session as a lane job: the .deb
built from this checkout, then the suite). Every check runs and is recorded. The checks
that fail are exactly those ``tests/dkms_suite-13.json`` lists, each with its reason (a
deliberate difference, or one not matched yet; docs/reference/dkms.md lists them): a
check failing that the list does not name fails this test, and so does a listed one that
passes now (the list, and the counts in the docs, are kept true)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import dkms_suite
from conftest import REPO, LaneJob

pytestmark = [pytest.mark.slow, pytest.mark.disk]


def start_dkms_suite(trees: dict[str, Any], work: Path) -> list[str | Path]:
    return [
        "bash",
        "-c",
        'bash "$0/scripts/deb.sh" "$1/dist" > "$1/deb.log" 2>&1 || { cat "$1/deb.log"; exit 1; }\n'
        'exec "$2" "$0/tests/dkms_suite.py" 13 "$1" "$1"/dist/extmod_*_all.deb',
        REPO,
        work,
        sys.executable,
    ]


@pytest.mark.lane("start_dkms_suite")
def test_dkms_3_2_2s_whole_suite(lane_job: LaneJob) -> None:
    assert lane_job.wait(timeout=3600) == 0, lane_job.log()[-3000:]
    checks = [
        dkms_suite.Check(**c) for c in json.loads((lane_job.work / "checks.json").read_text())
    ]
    known = json.loads(dkms_suite.KNOWN["13"].read_text())
    kver = (lane_job.work / "kver").read_text().strip()
    counts = dkms_suite.counts(checks)
    print(f"\nDKMS 3.2.2 run_test.sh: {json.dumps(counts)}")
    assert counts["checks"] > 500, counts  # the whole suite ran, not its first part
    new, fixed = dkms_suite.compare(checks, kver, known)
    details = {i: c.diff[:600] for i, c in dkms_suite.ids(checks, kver) if i in new}
    assert not new, (
        f"failing, not in {dkms_suite.KNOWN['13'].name}: {json.dumps(details, indent=1)}"
    )
    assert not fixed, f"passing now: take them out of {dkms_suite.KNOWN['13'].name}: {fixed}"
    assert set(known["failing"].values()) <= set(known["reasons"]), "a failure with no reason"
