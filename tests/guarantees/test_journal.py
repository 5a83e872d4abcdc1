"""The install journal in process, on a scratch root (fast): an install puts a module in
place and keeps the file it replaces; a crash at every point of an install is rolled back
by ``recover`` to the tree as it was, and a crash in an uninstall is finished by it. The
slow tests (test_real_crash.py) kill real extmod processes at the same points."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from extmod.core import atomic, config, faults, paths
from extmod.deploy import journaled
from extmod.store.state import BuildRecord, Built, BuiltModule, State

KVER = "6.1.0-56-amd64"


class Crash(BaseException):
    """What a power cut at a crash point is to the code: nothing after it runs."""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[State, paths.Paths, Built]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    kdir = root / "lib/modules" / KVER
    (kdir / "updates/dkms").mkdir(parents=True)
    (kdir / "updates/dkms/hello.ko").write_bytes(b"someone else's hello")
    (kdir / "kernel/drivers").mkdir(parents=True)
    (kdir / "kernel/drivers/hello.ko").write_bytes(b"the in-tree hello")
    p = paths.for_invocation(root, {}, 0)
    state = State(p)
    final = state.finished_dir("hello", "1.0", KVER, "x86_64")
    tmp = atomic.new_dir_beside(final)
    (tmp / "module").mkdir()
    (tmp / "module/hello.ko").write_bytes(b"our hello")
    sha = hashlib.sha256(b"our hello").hexdigest()
    rec = BuildRecord(
        "hello", "1.0", KVER, "x86_64", "now",
        (BuiltModule("hello", "hello", "/extra", "hello.ko", sha),),
    )  # fmt: skip
    atomic.write_json(tmp / "build.json", rec.to_json())
    state.publish_built(tmp, "hello", "1.0", KVER, "x86_64")
    built = state.find_built("hello", "1.0", KVER, "x86_64")
    assert built is not None
    return state, p, built


def _tree(p: paths.Paths) -> dict[str, bytes]:
    kdir = p.modules_dir / KVER
    return {str(f.relative_to(kdir)): f.read_bytes() for f in kdir.rglob("*") if f.is_file()}


def _crash_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real: Callable[[str], None] = faults.point

    def point(at: str) -> None:
        real(at)
        if at == name:
            raise Crash(at)

    monkeypatch.setattr(faults, "point", point)


def test_install_then_uninstall(setup: tuple[State, paths.Paths, Built]) -> None:
    state, p, built = setup
    cfg = config.load(None, flags={}, environ={})
    before = _tree(p)
    rec = journaled.install(state, p, cfg, built)
    after = _tree(p)
    # Debian: /updates/dkms, whatever DEST_MODULE_LOCATION says; the file there is kept
    assert after["updates/dkms/hello.ko"] == b"our hello"
    assert rec.files[0].original == "updates/dkms/hello.ko"
    assert rec.files[0].shadows == ("kernel/drivers/hello.ko",)
    assert state.find_installed(KVER, "x86_64", "hello") == rec
    assert state.journals() == [] and state.kernels_needing_depmod() == [KVER]
    assert journaled.uninstall(state, p, rec) == []
    assert _tree(p) == before and state.find_installed(KVER, "x86_64", "hello") is None


# install:staged is an upgrade's, before install() (test_a_crash_while_staging_...)
@pytest.mark.parametrize(
    "point", [p for p in faults.POINTS if p.startswith("install:") and p != "install:staged"]
)
def test_a_crash_in_an_install_is_rolled_back(
    point: str, setup: tuple[State, paths.Paths, Built], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, p, built = setup
    before = _tree(p)
    _crash_at(monkeypatch, point)
    with pytest.raises(Crash):
        journaled.install(state, p, config.load(None, flags={}, environ={}), built)
    monkeypatch.undo()  # the next command runs without the crash
    assert state.journals(), "the crash left its journal"
    notes = journaled.recover(state, p, KVER)
    assert notes == [f"rolled back the interrupted install of hello/1.0 on {KVER}"]
    assert _tree(p) == before
    assert state.find_installed(KVER, "x86_64", "hello") is None and state.journals() == []


def test_a_crash_while_staging_an_upgrade_leaves_the_old_install(
    setup: tuple[State, paths.Paths, Built], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, p, built = setup
    cfg = config.load(None, flags={}, environ={})
    rec = journaled.install(state, p, cfg, built)
    before = _tree(p)
    _crash_at(monkeypatch, "install:staged")
    with pytest.raises(Crash):
        journaled.stage(state, p, cfg, built, (), "0.9")
    monkeypatch.undo()
    assert _tree(p) != before  # the staged copy is there
    notes = journaled.recover(state, p, KVER)
    assert notes == [f"removed the staged modules of an interrupted install of hello on {KVER}"]
    assert _tree(p) == before and state.find_installed(KVER, "x86_64", "hello") == rec


@pytest.mark.parametrize("point", [p for p in faults.POINTS if p.startswith("uninstall:")])
def test_a_crash_in_an_uninstall_is_finished(
    point: str, setup: tuple[State, paths.Paths, Built], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, p, built = setup
    before = _tree(p)
    rec = journaled.install(state, p, config.load(None, flags={}, environ={}), built)
    _crash_at(monkeypatch, point)
    with pytest.raises(Crash):
        journaled.uninstall(state, p, rec)
    monkeypatch.undo()  # the next command runs without the crash
    notes = journaled.recover(state, p, KVER)
    assert notes == [f"finished the interrupted uninstall of hello/1.0 on {KVER}"]
    assert _tree(p) == before
    assert state.find_installed(KVER, "x86_64", "hello") is None and state.journals() == []
