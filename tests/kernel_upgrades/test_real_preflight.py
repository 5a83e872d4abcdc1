"""extmod preflight (issue 25) with Debian's real header packages and Debian's packages.

A root runs Debian's 6.1 kernel with acpi-call-dkms and vpoll-dkms installed. The header
packages of bookworm-backports' 6.12 (the .deb files, unpacked by preflight itself) are
preflighted: acpi-call builds, vpoll fails with its first error (``class_create`` changed
in 6.4), and nothing under /lib/modules changes; ``status`` shows no 6.12 row. Then the
kernel arrives (its headers linked in, as their package does) and its postinst hook runs
with a gcc that fails when asked to compile: acpi-call installs from the build store the
preflight filed."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import extmod, failing_gcc, make_root

pytestmark = pytest.mark.slow


def _snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file() and not p.is_symlink()
        else "->" + str(p.readlink())
        if p.is_symlink()
        else "dir"
        for p in sorted(d.rglob("*"))
    }


def test_preflight_from_header_packages(trees: dict[str, Any], tmp_path: Path) -> None:
    old, new = trees["gcc"], trees["debian612"]
    root = make_root(tmp_path / "root", old["kver"], old["build"])
    for deb in ("acpi-call-dkms", "vpoll-dkms"):
        src = Path(trees["dkms"]["packages"][deb]["src"])
        shutil.copytree(src, root / "usr/src" / src.name, symlinks=True)
        r = extmod(
            ["-q", "--root", root, "install", root / "usr/src" / src.name, "-k", old["kver"]]
        )
        assert r.rc == 0, r.err
    before = _snapshot(root / "lib/modules")

    debs = sorted(Path(new["header_debs"]).glob("linux-*.deb"))
    r = extmod(["--root", root, "--json", "preflight", "--deb", *debs])
    assert r.out, r.err
    rows = {row["package"].split("/")[0]: row for row in r.json()["rows"]}
    assert rows["acpi-call"]["verdict"] == "builds" and rows["acpi-call"]["kver"] == new["kver"]
    assert rows["vpoll"]["verdict"] == "fails" and "class_create" in rows["vpoll"]["detail"]
    assert r.rc == 6, r.err  # the first failure's code, as autoinstall's
    assert _snapshot(root / "lib/modules") == before
    status = extmod(["--root", root, "--json", "status"]).json()
    assert not [s for s in status if s["kernel"] == new["kver"]], status

    # the kernel arrives; its hook installs what preflight built, compiling nothing
    link = root / "lib/modules" / new["kver"] / "build"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(new["build"], link.parent))  # --root re-roots absolute
    (link.parent / "source").symlink_to(os.path.relpath(new["source"], link.parent))
    r = extmod(
        ["--root", root, "--json", "kernel-postinst", new["kver"]],
        env=failing_gcc(tmp_path / "bin"),
    )
    out = {o["ident"].split("/")[0]: o for o in r.json()["outcomes"] if o["action"] == "built"}
    assert "from the store" in out["acpi-call"]["detail"], r.out + r.err
    assert list((root / "lib/modules" / new["kver"]).rglob("acpi_call.ko*"))
