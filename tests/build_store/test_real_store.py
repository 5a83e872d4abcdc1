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

from conftest import EXAMPLES, copy_headers, extmod, failing_gcc, make_root

pytestmark = pytest.mark.slow

CONF = (
    'PACKAGE_NAME="stored"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="hello"\n'
    'DEST_MODULE_LOCATION[0]="/extra"\n'
)


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

    no_gcc = failing_gcc(tmp_path / "bin")
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


def _primed(trees: dict[str, Any], base: Path) -> tuple[Path, Path]:
    """A root where stored/1.0 was built (so the store holds it) and then removed whole."""
    kver = trees["gcc"]["kver"]
    root = make_root(base / "root", kver, trees["gcc"]["build"])
    src = base / "stored-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(CONF)
    assert extmod(["-q", "--root", root, "install", src, "-k", kver]).rc == 0
    assert extmod(["-q", "--root", root, "remove", "stored", "--all"]).rc == 0
    return root, src


def _kernel_edit(edit: Any) -> Any:
    """The root's kernel becomes an edited copy of the headers; undone by the returned call."""

    def change(root: Path, trees: dict[str, Any], tmp: Path) -> Any:
        tree = tmp / "headers"
        shutil.rmtree(tree, ignore_errors=True)
        copy_headers(Path(trees["gcc"]["build"]), tree)
        edit(tree)
        link = root / "lib/modules" / trees["gcc"]["kver"] / "build"
        old = os.readlink(link)
        link.unlink()
        link.symlink_to(os.path.relpath(tree, link.parent))
        return lambda: (link.unlink(), link.symlink_to(old))

    return change


def _append(rel: str, text: str) -> Any:
    def edit(tree: Path) -> None:
        f = tree / rel
        data = f.read_text() + text
        f.unlink()  # the copy's file, not the original's
        f.write_text(data)

    return edit


def _override(root: Path, trees: dict[str, Any], tmp: Path) -> Any:
    f = root / "etc/dkms/stored.conf"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text('CLEAN="true"\n')
    return f.unlink


def _source_byte(root: Path, trees: dict[str, Any], tmp: Path) -> Any:
    f = root / "usr/src/stored-1.0/hello.c"
    text = f.read_text()
    f.write_text(text + " ")
    return lambda: f.write_text(text)


def _other_gcc(root: Path, trees: dict[str, Any], tmp: Path) -> Any:
    """A gcc-12 that says another version (and fails to compile, as the others)."""
    for name in ("gcc-12", "x86_64-linux-gnu-gcc-12"):
        (tmp / "bin" / name).write_text(
            '#!/bin/sh\necho "gcc-12 (Debian 12.9.9-1) 12.9.9"\nexit 1\n'
        )
    return lambda: failing_gcc(tmp / "bin")


def _none(root: Path, trees: dict[str, Any], tmp: Path) -> Any:
    return lambda: None


# (change, a hit expected, extra environment): each input of the digest misses; a launcher
# hits when compiles see the same paths (build.map_paths off), and misses when they see the
# path view (build.map_paths auto with a launcher: paths in the objects differ).
CCACHE = {"EXTMOD_LAUNCHER": "ccache"}
CHANGES: dict[str, tuple[Any, bool, dict[str, str]]] = {
    "nothing": (_none, True, {}),
    "ccache, the same paths": (_none, True, {**CCACHE, "EXTMOD_MAP_PATHS": "off"}),
    "ccache, the path view": (_none, False, CCACHE),
    "one source byte": (_source_byte, False, {}),
    "an /etc/dkms override": (_override, False, {}),
    "the kernel's config": (
        _kernel_edit(_append("include/config/auto.conf", "CONFIG_EXTMOD_X=y\n")),
        False,
        {},
    ),
    "the kernel's Module.symvers": (
        _kernel_edit(_append("Module.symvers", "0x0\textmod_x\tvmlinux\tEXPORT_SYMBOL\t\n")),
        False,
        {},
    ),
    "the compiler's version": (_other_gcc, False, {}),
}


def test_each_input_of_the_digest_misses(trees: dict[str, Any], tmp_path: Path) -> None:
    """Issue 23, correct by construction: a stored build is taken only when nothing it was
    built from changed. One root (where it sits is not an input: a host at another root
    hits, test_real_shared_store); each change made, tried and undone: a hit installs with
    a gcc that cannot compile, a miss fails on it (exit 6). ``.incbin`` inputs are covered
    as any file: the whole source tree is in the digest."""
    root, _ = _primed(trees, tmp_path)
    kver = trees["gcc"]["kver"]
    base_env = failing_gcc(tmp_path / "bin") | {"CCACHE_DIR": str(tmp_path / "ccache")}
    wrong = []
    for change, (apply, hit, more) in CHANGES.items():
        undo = apply(root, trees, tmp_path)
        r = extmod(["--root", root, "install", "stored/1.0", "-k", kver], env=base_env | more)
        got_hit = r.rc == 0 and "from the store" in r.out
        got_miss = r.rc == 6 and "from the store" not in r.out  # make ran, and failed
        if not (got_hit if hit else got_miss):
            wrong.append(f"{change}: expected a {'hit' if hit else 'miss'}: {r.rc} {r.err[-300:]}")
        undo()
        assert extmod(["-q", "--root", root, "remove", "stored", "--all"]).rc == 0
        shutil.rmtree(root / "var/lib/extmod/build", ignore_errors=True)  # failed.json
    assert not wrong, wrong


def test_a_damaged_object_is_a_miss_named_by_file_and_field(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 32: the store's object for the pair has ``dest_location = "/../../../../etc"``
    (someone who could write the state dir): the install says in one line which file and
    field, drops the object, builds here, installs where dkms.conf says, and the next
    install takes the new object from the store."""
    kver = trees["gcc"]["kver"]
    root, src = _primed(trees, tmp_path)
    (meta,) = (root / "var/lib/extmod/store").glob("??/*/object.json")
    data = json.loads(meta.read_text())
    data["modules"][0]["dest_location"] = "/../../../../etc"
    meta.write_text(json.dumps(data))
    r = extmod(["--root", root, "--json", "install", src, "-k", kver])
    assert r.rc == 0, r.err
    notes = [line for line in r.err.splitlines() if "is dropped" in line]
    assert len(notes) == 1 and str(meta) in notes[0], r.err
    assert "modules[0].dest_location" in notes[0] and "leads out" in notes[0], notes
    (built,) = [o for o in r.json()["outcomes"] if o["action"] == "built"]
    assert "from the store" not in built["detail"], built  # built here
    assert (root / "lib/modules" / kver / "updates/dkms/hello.ko").is_file()
    assert not list(root.rglob("passwd*")) and not (root.parent / "etc").exists()
    assert extmod(["-q", "--root", root, "remove", "stored", "--all"]).rc == 0
    r = extmod(
        ["--root", root, "--json", "install", src, "-k", kver], env=failing_gcc(tmp_path / "bin")
    )
    assert r.rc == 0 and "from the build store" in r.err, r.err
