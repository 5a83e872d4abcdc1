"""extmod's ``dkms`` against Debian's dkms 3.0.10, line by line (issue 12): the command lines
of dh_dkms's postinst and prerm, of Debian's kernel prerm.d hook and of everyday use, in
twin trees, on Debian's 6.1 headers with real archive packages (vpoll-dkms, acpi-call-dkms).
Every line ends with the same exit code, and every ``status`` prints the same lines; each
tool loads the tarballs the other made. The table is printed (pytest -s) and quoted in the
README."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

import conformance

pytestmark = pytest.mark.slow


def test_dkms_command_lines_match_dkms_3_0_10(trees: dict[str, Any], tmp_path: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="extmod-conformance-", dir="/var/tmp"))
    try:
        dk, ext = conformance.run_both(trees, work)
        text = conformance.table(dk, ext, trees["gcc"]["kver"])
        print("\n" + text)
        (tmp_path / "conformance.md").write_text(text + "\n")
        for (line, _), d, e in zip(conformance.LINES, dk, ext, strict=True):
            assert (e.rc, e.out) == (d.rc, d.out), (line, d, e)
        # the lines do what they say: installed, then gone, in both
        installed = [
            r.out for (line, _), r in zip(conformance.LINES, ext, strict=True) if line == "status"
        ]
        assert any(o and o[0].endswith(": installed") for o in installed), installed
        codes = {line: r.rc for (line, _), r in zip(conformance.LINES, ext, strict=True)}
        assert codes["build -m excluded -v 1.0 -k {K}"] == 77
        assert codes["build --bogus"] == 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
