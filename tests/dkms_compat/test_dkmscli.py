"""The ``dkms`` front's command line, parsed as dkms 3.0.10's option loop parses it (fast;
the real comparison with dkms is tests/dkms_compat/test_dkms_conformance.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from extmod.ui.dkms import cli as dkmscli
from extmod.ui.dkms.cli import DkmsExit, parse

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_module_version_kernel_arch_forms(tmp_path: Path) -> None:
    a = parse(
        [
            "install",
            "-m",
            "zfs/2.1.11",
            "-k",
            "6.1.0-56-amd64/x86_64",
            "-k=6.12.9",
            "--arch",
            "x86_64",
            "--dkmstree=/t",
            "--sourcetree",
            "/s",
            "-j",
            "4",
        ]
    )
    assert (a.action, a.module, a.version) == ("install", "zfs", "2.1.11")
    assert a.kernels == ["6.1.0-56-amd64", "6.12.9"] and a.arches == ["x86_64", "x86_64"]
    assert (a.opt("dkms_tree"), a.opt("source_tree"), a.opt("jobs")) == ("/t", "/s", "4")
    b = parse(["vpoll/0.1", "status"])
    assert (b.action, b.module, b.version) == ("status", "vpoll", "0.1")
    c = parse(["remove", "-m", "vpoll", "-v", "0.1", "--all", "-q"])
    assert {"all", "quiet"} <= c.flags and c.version == "0.1"


def test_positional_source_dir_and_archive(tmp_path: Path) -> None:
    src = tmp_path / "pkg-1.0"
    src.mkdir()
    (src / "dkms.conf").write_text("")
    tar = tmp_path / "pkg.dkms.tar.gz"
    tar.write_bytes(b"")
    assert parse(["add", str(src)]).source_dir == str(src)
    assert parse(["add", str(src / "dkms.conf")]).source_dir == str(src)
    assert parse(["ldtarball", str(tar)]).opt("archive") == str(tar)


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["build", "--bogus"], 2),
        (["build", "install"], 4),
        (["mktarball", "--binaries-only", "--source-only"], 8),
        (["status", "-k", "6.1", "--all"], 2),
        (["status", "-a", "x86_64", "--all"], 3),
        (["build", "-k", "a", "-k", "b", "-k", "c", "-a", "x", "-a", "y"], 1),
    ],
)
def test_dkms_exit_codes_of_bad_command_lines(argv: list[str], code: int) -> None:
    with pytest.raises(DkmsExit) as e:
        parse(argv)
    assert e.value.code == code


def test_deprecated_option_warns_and_version_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(["install", "--no-initrd"]).warnings == ["Deprecated feature: --no-initrd"]
    assert dkmscli.main(["--version"]) == 0
    # dkms's RELEASE_STRING exactly: scripts parse dkms-X.Y.Z (issue 22)
    assert capsys.readouterr().out == f"dkms-{dkmscli.DKMS_VERSION}\n"
    assert dkmscli.main(["--nope"]) == 2
    assert "Error! Unknown option: --nope" in capsys.readouterr().err


def test_framework_conf_is_read_as_dkms_reads_it(tmp_path: Path) -> None:
    etc = tmp_path / "etc/dkms"
    (etc / "framework.conf.d").mkdir(parents=True)
    (etc / "framework.conf").write_text(
        'parallel_jobs=3\nsign_file="/lib/modules/${kernelver}/build/scripts/sign-file"\n'
    )
    (etc / "framework.conf.d/local.conf").write_text(
        "parallel_jobs=$((parallel_jobs+2))\nmok_signing_key=/k/mok.key\n"
    )
    fw = dkmscli.read_framework(etc)
    assert fw == {
        "parallel_jobs": "5",
        "mok_signing_key": "/k/mok.key",
        "sign_file": "/lib/modules/$kernelver/build/scripts/sign-file",
    }


def test_quiet_silences_everything_as_dkms_does(tmp_path: Path) -> None:
    """dkms -q is ``exec >/dev/null 2>&1``: not a word, even for an error (issue 22); the
    exit status says what happened. In a child: it redirects its own stdout and stderr."""
    import subprocess
    import sys

    def dkms(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from extmod.ui.dkms.cli import main; sys.exit(main())",
                *args,
            ],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "EXTMOD_ROOT": str(tmp_path), "PYTHONPATH": SRC},
        )

    loud = dkms("status", "-m", "nope", "--nope")
    assert loud.returncode == 2 and "Unknown option" in loud.stderr
    quiet = dkms("-q", "status", "-m", "nope", "--version")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    quiet = dkms("-q", "build", "-m", "nope", "-v", "1")
    assert quiet.returncode != 0 and (quiet.stdout, quiet.stderr) == ("", "")
