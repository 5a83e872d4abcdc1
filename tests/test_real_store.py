"""The local build store (issue 23), on Debian's 6.1 headers with Debian's gcc-12.

A package installed, removed whole and added again installs from the store: no compile (a
gcc on PATH that fails unless asked its version proves it), the same signed module bytes
as the first install (the same key signs the same bytes the same way), and ``status``
names the store. A changed source byte misses (the failing gcc then fails the build);
``clean --all`` empties the store, and ``store.max_size`` bounds it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, extmod, make_root

pytestmark = pytest.mark.slow

CONF = (
    'PACKAGE_NAME="stored"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="hello"\n'
    'DEST_MODULE_LOCATION[0]="/extra"\n'
)
# Answers what the toolchain lookup asks (the version), and fails any compile.
NO_COMPILE = """#!/bin/sh
case "$1" in
--version|-v|-dumpversion|-dumpfullversion) exec /usr/bin/"$(basename "$0")" "$@";;
esac
echo "no compile expected: $0 $*" >&2
exit 1
"""


def _failing_gcc(d: Path) -> dict[str, str]:
    d.mkdir()
    for name in ("gcc", "gcc-12", "x86_64-linux-gnu-gcc-12", "cc"):
        (d / name).write_text(NO_COMPILE)
        (d / name).chmod(0o755)
    return {"PATH": f"{d}:{os.environ['PATH']}"}


def _ko(root: Path, kver: str) -> str:
    return hashlib.sha256(
        (root / "lib/modules" / kver / "updates/dkms/hello.ko").read_bytes()
    ).hexdigest()


def test_a_build_is_made_once(trees: dict[str, Any], tmp_path: Path) -> None:
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    src = tmp_path / "stored-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(CONF)
    r = extmod(["--root", root, "--json", "install", src, "-k", kver])
    assert r.rc == 0, r.err
    (built,) = [o for o in r.json()["outcomes"] if o["action"] == "built"]
    assert "from the store" not in built["detail"], built
    first = _ko(root, kver)

    r = extmod(["-q", "--root", root, "remove", "stored", "--all"])
    assert r.rc == 0 and not (root / "lib/modules" / kver / "updates/dkms/hello.ko").exists()
    show = extmod(["--root", root, "--json", "cache", "show"]).json()
    assert [row["kind"] for row in show].count("store") == 1, show

    no_gcc = _failing_gcc(tmp_path / "bin")
    r = extmod(["--root", root, "--json", "install", src, "-k", kver], env=no_gcc)
    assert r.rc == 0, r.out + r.err
    (built,) = [o for o in r.json()["outcomes"] if o["action"] == "built"]
    assert "from the store" in built["detail"], built
    assert _ko(root, kver) == first  # the same bytes, signed with the same key
    (row,) = extmod(["--root", root, "--json", "status"]).json()
    assert row["state"] == "installed" and row["from_store"], row

    # a changed input misses: the failing gcc is asked to compile
    usr_src = root / "usr/src/stored-1.0"
    (usr_src / "hello.c").write_text((usr_src / "hello.c").read_text() + "\n/* changed */\n")
    r = extmod(["-q", "--root", root, "install", "stored/1.0", "-k", kver], env=no_gcc)
    assert r.rc == 6 and "MAKE of stored/1.0" in r.err, r.err

    # clean --all empties it; store.max_size bounds it
    assert extmod(["-q", "--root", root, "clean", "--all"]).rc == 0
    assert not [
        x
        for x in extmod(["--root", root, "--json", "cache", "show"]).json()
        if x["kind"] == "store"
    ]
    r = extmod(
        ["-q", "--root", root, "install", "stored/1.0", "-k", kver],
        env={"EXTMOD_STORE_MAX_SIZE": "1"},
    )
    assert r.rc == 0, r.err
    assert not [
        x
        for x in extmod(["--root", root, "--json", "cache", "show"]).json()
        if x["kind"] == "store"
    ]
    record = json.loads(
        next((root / "var/lib/extmod/packages/stored/1.0/built").glob("*/*/build.json")).read_text()
    )
    assert record["from_store"] is None  # compiled, and then pruned from the store
