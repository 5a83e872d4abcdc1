"""extmod's ``dkms`` against Debian's dkms, line by line: 3.0.10 (Debian 12, issue 12) and
3.2.2 (Debian 13, issue 21), extmod answering as each ([dkms] version). The command lines
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


@pytest.mark.parametrize("dkms", ["dkms", "dkms13"])
def test_dkms_command_lines_match_debians_dkms(
    trees: dict[str, Any], tmp_path: Path, dkms: str
) -> None:
    work = Path(tempfile.mkdtemp(prefix="extmod-conformance-", dir="/var/tmp"))
    try:
        dk, ext = conformance.run_both(trees, work, dkms)
        text = conformance.table(dk, ext, trees["gcc"]["kver"], conformance.release(trees, dkms))
        print("\n" + text)
        (tmp_path / "conformance.md").write_text(text + "\n")
        lines = conformance.lines_for(conformance.release(trees, dkms))
        for (line, _), d, e in zip(lines, dk, ext, strict=True):
            assert (e.rc, e.out) == (d.rc, d.out), (line, d, e)
        # the lines do what they say: installed, then gone, in both
        installed = [r.out for (line, _), r in zip(lines, ext, strict=True) if line == "status"]
        assert any(o and o[0].endswith(": installed") for o in installed), installed
        codes = {line: r.rc for (line, _), r in zip(lines, ext, strict=True)}
        assert codes["build -m excluded -v 1.0 -k {K}"] == 77
        assert codes["build --bogus"] == 2
        if dkms == "dkms13":  # kernel_preinst unbuilt the AUTOINSTALL vpoll: "added" again
            i = [line for line, _ in lines].index("kernel_preinst -k {K}")
            assert codes["kernel_preinst -k {K}"] == 0
            assert ext[i + 1].out == ["vpoll/0.1: added"], ext[i + 1]
    finally:
        shutil.rmtree(work, ignore_errors=True)
