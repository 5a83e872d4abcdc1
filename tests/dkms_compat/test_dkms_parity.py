"""Parity with Debian's dkms on 12 real Debian DKMS packages and zfs-dkms, on Debian's gcc
headers (6.1, and 6.12 from bookworm-backports) and on the clang-16 ThinLTO defconfig tree of
6.1 (issues 3 and 13). The table is printed (run pytest with -s to see it; it is also
written to the test's tmp dir) and quoted in the README. zfs as extmod installed it on
Debian's 6.1 is then loaded in qemu on Debian's own vmlinuz."""

from __future__ import annotations

import json
import lzma
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import parity
from conftest import LaneJob, boot, check_console

pytestmark = pytest.mark.slow


def start_parity(trees: dict[str, Any], work: Path) -> list[str | Path]:
    """The lane job (conftest.lane_job, started with the session): every column, the two
    tools of a column at once, dkms's runs kept in the test cache by their inputs
    (parity.dkms_kept), the runs as JSON."""
    return [
        sys.executable,
        parity.__file__,
        "--at-once",
        "--keep-dkms",
        "--json",
        work / "runs.json",
        work / "w",
    ]


@pytest.mark.lane("start_parity")
def test_parity_with_debian_dkms(trees: dict[str, Any], tmp_path: Path, lane_job: LaneJob) -> None:
    assert lane_job.wait(timeout=4800) == 0, lane_job.log()[-3000:]
    work = lane_job.work / "w"
    runs = parity.from_json(json.loads((lane_job.work / "runs.json").read_text()))
    packages = list(parity.packages(trees))
    text = parity.table(runs, packages)
    print("\n" + text)
    (tmp_path / "parity.md").write_text(text + "\n")
    # The README's table is the recorded run (test_docs): an outcome that changed since
    # makes it stale.
    changed = parity.outcome_changes(runs, parity.recorded())
    assert not changed, (
        f"outcomes differ from tests/parity-runs.json (the README's table): {changed}; "
        f"record again: python tests/parity.py --record DIR"
    )

    for dkms_run, ext_run in zip(runs[0::2], runs[1::2], strict=True):
        for p in packages:
            d, e = dkms_run.cells[p], ext_run.cells[p]
            where = f"{p} on {dkms_run.kernel}"
            if d.status == "ok":
                assert e.status == "ok", f"{where}: dkms builds it, extmod: {e.reason}"
                assert parity.uncompressed(e.paths) == parity.uncompressed(d.paths), (
                    f"{where}: installed elsewhere: {e.paths} vs dkms {d.paths}"
                )
            if d.status == "n/a":
                assert e.status == "n/a", where
            if d.status == "skip":
                assert e.status == "skip", f"{where}: dkms skips it, extmod: {e.status}"
            if e.status == "fail":
                # One line: the first error (file:line when the compiler said one) and
                # the log path.
                assert "\n" not in e.reason and "(log: " in e.reason, (where, e.reason)
                assert not parity.TOOLCHAIN_LOST.search(e.reason), (where, e.reason)
            if d.status == "fail" and d.reason.startswith("toolchain lost"):
                # dkms gave the clang kernel's build to gcc. extmod builds it with the
                # kernel's clang: it either succeeds or hits a real source error.
                assert e.status == "ok" or re.search(r":\d+(:\d+)?: (fatal )?error: ", e.reason), (
                    where,
                    e.reason,
                )
    # The clang tree shows the point of the exercise: at least one package that dkms
    # loses to the wrong compiler is built by extmod.
    rescued = [
        p
        for p in packages
        if runs[2].cells[p].reason.startswith("toolchain lost") and runs[3].cells[p].status == "ok"
    ]
    assert rescued, "expected dkms to lose the toolchain on a compound MAKE (jool)"
    # zfs, as extmod installed it on Debian's 6.1 headers, loads on Debian's 6.1 kernel:
    # spl, znvpair, ... zfs in dependency order, then unloaded in reverse
    gcc = next(r for r in runs if r.kernel == "gcc" and r.tool == "extmod")
    assert gcc.cells["zfs-dkms"].status == "ok", gcc.cells["zfs-dkms"].reason
    lib = work / "extmod-gcc/root/lib/modules" / gcc.kver
    mods = []
    for rel in gcc.cells["zfs-dkms"].paths:
        f = lib / rel
        ko = tmp_path / "zfs" / f.name.removesuffix(".xz")
        ko.parent.mkdir(exist_ok=True)
        ko.write_bytes(
            lzma.decompress(f.read_bytes()) if f.name.endswith(".xz") else f.read_bytes()
        )
        mods.append(ko)
    assert len(mods) == 9, mods  # 2.1: spl, znvpair, zcommon, icp, ... zfs
    console = boot(
        Path(trees["gcc"]["vmlinuz"]), mods, trees["busybox"], tmp_path / "qemu", memory=1024
    )
    version = Path(trees["zfs"]["bookworm"]["src"]).name.removeprefix("zfs-")
    check_console(
        console,
        gcc.kver,
        [m.name.removesuffix(".ko") for m in mods],
        [f"ZFS: Loaded module v{version}"],
    )
