"""`extmod doctor` against the real kernel trees: each problem made real, each with its fix
and exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, extmod, make_root

pytestmark = pytest.mark.slow


def _checks(res: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["area"], c["subject"]): c for c in json.loads(res.out)}


def _two_kernels(tmp: Path, trees: dict[str, Any]) -> Path:
    root = make_root(tmp / "root", trees["gcc"]["kver"], trees["gcc"]["build"])
    link = root / "lib/modules" / trees["defconfig"]["kver"] / "build"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(trees["defconfig"]["build"], link.parent))
    return root


def test_doctor_on_real_trees(tmp_path: Path, trees: dict[str, Any]) -> None:
    gcc, lto = trees["gcc"]["kver"], trees["defconfig"]["kver"]
    root = _two_kernels(tmp_path, trees)
    res = extmod(["--root", root, "--json", "doctor"])
    assert res.rc == 0, res.out + res.err
    c = _checks(res)
    assert c[("headers", gcc)]["status"] == "ok" and c[("headers", lto)]["status"] == "ok"
    assert "gcc-12" in c[("toolchain", gcc)]["detail"]
    assert "clang version 16" in c[("toolchain", lto)]["detail"]
    assert "ThinLTO" in c[("toolchain", lto)]["detail"]
    assert "made in" in c[("signing", gcc)]["detail"]  # no key yet; doctor makes none
    assert not (root / "var/lib/extmod/keys").exists()
    human = extmod(["--root", root, "doctor"])
    assert human.rc == 0 and f"ok    headers    {gcc}: " in human.out

    # A kernel whose headers are not installed: FAIL, the apt line, exit 4.
    (root / "lib/modules/6.1.0-99-amd64/kernel").mkdir(parents=True)
    res = extmod(["--root", root, "--json", "doctor"])
    assert res.rc == 4
    bad = _checks(res)[("headers", "6.1.0-99-amd64")]
    assert bad["status"] == "FAIL" and bad["fix"] == "apt-get install linux-headers-6.1.0-99-amd64"
    assert extmod(["--root", root, "doctor", "-k", gcc]).rc == 0  # only the one asked for

    # A kernel built with a compiler this machine lacks (a copy of the tiny clang tree that
    # says clang 99): FAIL, exit 5, the package named.
    odd = tmp_path / "clang99"
    subprocess.run(["cp", "-al", trees["thinlto"]["build"], str(odd)], check=True)
    for name in ("include/config/auto.conf", ".config"):
        f = odd / name
        text = f.read_text().replace("CONFIG_CLANG_VERSION=160006", "CONFIG_CLANG_VERSION=990000")
        f.unlink()
        f.write_text(text)
    link = root / "lib/modules/clang99/build"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(odd, link.parent))
    res = extmod(["--root", root, "--json", "doctor", "-k", "clang99"])
    assert res.rc == 5, res.out + res.err
    tc = _checks(res)[("toolchain", "clang99")]
    assert tc["status"] == "FAIL" and "clang-99" in tc["detail"] and "apt-get install" in tc["fix"]
    shutil.rmtree(root / "lib/modules/clang99")
    shutil.rmtree(root / "lib/modules/6.1.0-99-amd64")

    # A signing key sign-file cannot use (passphrase): FAIL, exit 3.
    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-subj",
            "/CN=t",
            "-passout",
            "pass:secret",
            "-keyout",
            str(keys / "k.pem"),
            "-outform",
            "DER",
            "-out",
            str(keys / "c.der"),
        ],
        check=True,
        capture_output=True,
    )
    conf = tmp_path / "config.toml"
    conf.write_text(f'[sign]\nkey = "{keys / "k.pem"}"\ncert = "{keys / "c.der"}"\n')
    res = extmod(["--root", root, "--config", conf, "--json", "doctor", "-k", gcc])
    assert res.rc == 3
    assert "passphrase" in _checks(res)[("signing", gcc)]["detail"]

    # DKMS still in charge, a failed build, an interrupted install: warnings with fixes.
    (root / "var/lib/dkms/v4l2loopback/0.12.7").mkdir(parents=True)
    broken = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "dkms-pair", broken, symlinks=True)
    (broken / "hello/hello.c").write_text("int broken(void) { return missing_symbol; }\n")
    assert extmod(["--root", root, "install", broken, "-k", gcc]).rc == 6
    res = extmod(["--root", root, "--json", "doctor", "-k", gcc])
    assert res.rc == 0, res.out + res.err  # warnings only
    found = json.loads(res.out)
    dkms = next(x for x in found if x["area"] == "dkms")
    assert "v4l2loopback" in dkms["detail"] and "import-dkms" in dkms["fix"]
    failed = next(x for x in found if x["area"] == "state" and x["subject"] == gcc)
    assert "extmod-pair/1.0 failed to build" in failed["detail"]
    assert "missing_symbol" in failed["detail"] and failed["fix"].startswith("fix the cause")
    v2 = tmp_path / "v2"
    shutil.copytree(EXAMPLES / "dkms-pair", v2, symlinks=True)
    (v2 / "dkms.conf").write_text(
        (v2 / "dkms.conf").read_text().replace('PACKAGE_VERSION="1.0"', 'PACKAGE_VERSION="2.0"')
    )
    crash = extmod(
        ["--root", root, "install", v2, "-k", gcc], env={"EXTMOD_CRASH_AT": "install:file"}
    )
    assert crash.rc == -9
    res = extmod(["--root", root, "--json", "doctor", "-k", gcc])
    interrupted = [x for x in json.loads(res.out) if "interrupted" in x["detail"]]
    assert interrupted and interrupted[0]["status"] == "warn"
