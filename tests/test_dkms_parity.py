"""Parity with Debian's dkms on 12 real Debian DKMS packages, on Debian's gcc headers (6.1, and
6.12 from bookworm-backports) and on clang-16 ThinLTO defconfig trees of 6.1 and 6.12 (issues
3 and 13). The table is printed (run pytest with -s to see
it; it is also written to the test's tmp dir) and quoted in the README."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import parity

pytestmark = pytest.mark.slow


def test_parity_with_debian_dkms(trees: dict[str, Any], tmp_path: Path) -> None:
    work = Path("/var/tmp") / f"extmod-parity-{tmp_path.name}"
    runs = []
    try:
        for kernel in parity.KERNELS:
            runs.append(parity.run_dkms(trees, kernel, work))
            runs.append(parity.run_extmod(trees, kernel, work))
        packages = list(trees["dkms"]["packages"])
        text = parity.table(runs, packages)
        print("\n" + text)
        (tmp_path / "parity.md").write_text(text + "\n")

        for dkms_run, ext_run in zip(runs[0::2], runs[1::2], strict=True):
            for p in packages:
                d, e = dkms_run.cells[p], ext_run.cells[p]
                where = f"{p} on {dkms_run.kernel}"
                if d.status == "ok":
                    assert e.status == "ok", f"{where}: dkms builds it, extmod: {e.reason}"
                    assert e.paths == d.paths, f"{where}: installed elsewhere: {e.paths} " \
                                               f"vs dkms {d.paths}"
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
                    assert e.status == "ok" or re.search(r":\d+(:\d+)?: (fatal )?error: ",
                                                         e.reason), (where, e.reason)
        # The clang trees show the point of the exercise: on each, at least one package that
        # dkms loses to the wrong compiler is built by extmod.
        for dkms_run, ext_run in zip(runs[0::2], runs[1::2], strict=True):
            if not dkms_run.kernel.startswith("clang"):
                continue
            rescued = [p for p in packages
                       if dkms_run.cells[p].reason.startswith("toolchain lost")
                       and ext_run.cells[p].status == "ok"]
            assert rescued, f"{dkms_run.kernel}: expected dkms to lose the toolchain on a " \
                            "compound MAKE (jool)"
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
