"""/var/lib/dkms as a view of the state (store/dkmsview.py, issue 33), fast, on a scratch
root: made only where extmod is the root's dkms, in DKMS's layout, every entry a link into
the state; made again whole (a change by hand is undone, a package gone is gone); a tree
DKMS itself keeps is left alone. The real one: tests/dkms_compat/test_dkms_suite.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extmod.core import paths
from extmod.store import dkmsview
from extmod.store.state import Installed, InstalledFile, State
from test_state import KVER, _build


@pytest.fixture
def p(tmp_path: Path) -> paths.Paths:
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/dkms").write_text("#!/usr/bin/python3\nfrom extmod.ui.dkms.cli import main\n")
    (root / "usr/src/pkg-1.0").mkdir(parents=True)
    return paths.for_invocation(root, {}, 0)


def _installed(state: State) -> None:
    f = InstalledFile("updates/dkms/pkg.ko", "00" * 32, None, ())
    state.write_installed(Installed("pkg", "1.0", KVER, "x86_64", (f,), ("updates/dkms",)))


def test_the_view_is_dkms_layout_of_links_into_the_state(p: paths.Paths) -> None:
    state = State(p)
    state.add("pkg", "1.0", p.root / "usr/src/pkg-1.0")
    _build(state, "pkg", "1.0")
    _installed(state)
    (p.keys_dir).mkdir(parents=True)
    (p.keys_dir / "mok.key").write_text("key")
    dkmsview.sync(p)
    tree = p.dkms_records
    v = tree / "pkg/1.0"
    assert (v / "source").resolve() == (p.root / "usr/src/pkg-1.0").resolve()
    assert not os.readlink(v / "source").startswith("/")  # relative under a staged root
    module = v / KVER / "x86_64/module"
    assert module.is_symlink() and (module / "pkg.ko").read_bytes() == b"\x7fELF"
    assert (v / KVER / "x86_64/log/make.log").is_symlink()
    assert os.readlink(tree / f"pkg/kernel-{KVER}-x86_64") == f"1.0/{KVER}/x86_64"
    assert (tree / "mok.key").read_text() == "key" and (tree / "mok.key").is_symlink()
    assert not (tree / "mok.pub").exists()
    assert (tree / dkmsview.MARKER).is_file()

    (v / "by-hand").write_text("x")  # undone by the next sync
    state.drop_installed(KVER, "x86_64", "pkg")
    dkmsview.sync(p)
    assert not (v / "by-hand").exists()
    assert not (tree / f"pkg/kernel-{KVER}-x86_64").is_symlink()
    state.drop_built("pkg", "1.0", KVER, "x86_64")
    state.drop_added("pkg", "1.0")
    dkmsview.sync(p)
    assert sorted(x.name for x in tree.iterdir()) == [dkmsview.MARKER, "mok.key"]


def test_no_view_where_extmod_is_not_dkms_or_dkms_keeps_its_tree(p: paths.Paths) -> None:
    state = State(p)
    state.add("pkg", "1.0", p.root / "usr/src/pkg-1.0")
    theirs = p.dkms_records / "other/2.0"
    theirs.mkdir(parents=True)
    (theirs / "source").symlink_to("/usr/src/other-2.0")
    (p.dkms_records / "mok.key").write_text("dkms's")
    dkmsview.sync(p)  # DKMS's own tree: left alone
    assert sorted(x.name for x in p.dkms_records.iterdir()) == ["mok.key", "other"]

    (theirs / "source").unlink()  # DKMS's leftovers only: the view takes the dir
    (theirs / "stale.ko").write_text("x")
    dkmsview.sync(p)
    assert (p.dkms_records / "pkg/1.0/source").is_symlink()
    assert (p.dkms_records / "mok.key").read_text() == "dkms's"  # its own pair is kept
    assert (theirs / "stale.ko").exists()  # a file the view did not make: left

    (p.root / "usr/sbin/dkms").write_text("#!/bin/sh\n# Debian's dkms\n")
    assert not dkmsview.wanted(p)
