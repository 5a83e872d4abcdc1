"""extmod's ``dkms`` against Debian's dkms, line by line: 3.0.10 (Debian 12, issue 12) and
3.2.2 (Debian 13, issue 21), extmod answering as each ([dkms] version). The command lines
of dh_dkms's postinst and prerm, of Debian's kernel prerm.d hook and of everyday use, in
twin trees, on Debian's 6.1 headers with real archive packages (vpoll-dkms, acpi-call-dkms).
Every line ends with the same exit code, and every ``status`` prints the same lines; each
tool loads the tarballs the other made. The table is printed (pytest -s) and quoted in the
README."""

from __future__ import annotations

import concurrent.futures
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conformance

pytestmark = [pytest.mark.slow, pytest.mark.disk]


@pytest.fixture(scope="module")
def runs(trees: dict[str, Any]) -> Iterator[dict[str, tuple[list[Any], list[Any]]]]:
    """Both releases at once (each in twins of its own; the builds are small and the lines
    mostly wait on bash): {"dkms": (dkms's results, extmod's), "dkms13": ...}."""
    work = Path(tempfile.mkdtemp(prefix="extmod-conformance-", dir="/var/tmp"))
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = {d: pool.submit(conformance.run_both, trees, work / d, d) for d in DKMS_TREES}
            yield {d: f.result() for d, f in futures.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)


DKMS_TREES = ("dkms", "dkms13")  # Debian 12's dkms 3.0.10, Debian 13's 3.2.2


@pytest.mark.parametrize("dkms", DKMS_TREES)
def test_dkms_command_lines_match_debians_dkms(
    trees: dict[str, Any],
    tmp_path: Path,
    dkms: str,
    runs: dict[str, tuple[list[Any], list[Any]]],
) -> None:
    dk, ext = runs[dkms]
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
    if dkms == "dkms13":  # what run_test.sh of 3.2.2 checks (issue 35), as 3.2.2 exits
        assert codes["autoinstall --all"] == 5
        assert codes["autoinstall -k {K} -k {K}"] == 4
        assert codes["kernel_postinst"] == codes["kernel_prerm"] == 4
        assert codes["autoinstall -k 0.0.0-noheaders"] == 21
        assert codes["kernel_postinst -k 0.0.0-noheaders"] == 21
        assert codes["build -m needy -v 1.0 -k {K}"] == 13
        assert codes["build -m needy -v 1.0 -k {K} --force"] == 0
    if dkms == "dkms13":  # kernel_preinst unbuilt the AUTOINSTALL vpoll: "added" again
        i = [line for line, _ in lines].index("kernel_preinst -k {K}")
        assert codes["kernel_preinst -k {K}"] == 0
        assert ext[i + 1].out == ["vpoll/0.1: added"], ext[i + 1]
