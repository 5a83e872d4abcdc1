"""The state tree in process, on a scratch dir (fast): registrations, build records,
install records, the journal and the depmod marker, and what ``dkms status`` prints from
them. The slow tests exercise the same through real builds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from extmod.core import atomic, paths
from extmod.core.errors import UserError
from extmod.store.state import (
    BuildRecord,
    BuiltModule,
    Installed,
    InstalledFile,
    State,
    parse_spec,
)
from extmod.ui.dkms import cli as dkmscli
from extmod.ui.dkms import report as dkmsreport

KVER = "6.1.0-56-amd64"


@pytest.fixture
def state(tmp_path: Path) -> State:
    return State(paths.for_invocation(tmp_path / "root", {}, 0))


def _build(state: State, name: str, version: str, kver: str = KVER) -> None:
    final = state.finished_dir(name, version, kver, "x86_64")
    tmp = atomic.new_dir_beside(final)
    (tmp / "module").mkdir()
    (tmp / "module" / f"{name}.ko").write_bytes(b"\x7fELF")
    mod = BuiltModule(name, name, "/updates/dkms", f"{name}.ko", "00" * 32)
    rec = BuildRecord(name, version, kver, "x86_64", "2026-11-29T00:00:00Z", (mod,))
    atomic.write_json(tmp / "build.json", rec.to_json())
    state.publish_built(tmp, name, version, kver, "x86_64")


def test_add_find_select_drop(state: State, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    a, new = state.add("pkg", "1.0", src)
    assert new and state.add("pkg", "1.0", src) == (a, False)
    with pytest.raises(UserError, match="already added from"):
        state.add("pkg", "1.0", tmp_path)
    state.add("pkg", "1.10", src)
    state.add("pkg", "1.9", src)
    assert [x.version for x in state.versions_of("pkg")] == ["1.0", "1.9", "1.10"]
    assert [x.version for x in state.select("pkg/1.9")] == ["1.9"]
    assert state.select(str(src)) == state.all_added()
    with pytest.raises(UserError, match="not added"):
        state.select("other")
    for v in ("1.0", "1.9", "1.10"):
        state.drop_added("pkg", v)
    assert state.all_added() == [] and not (state.dir / "packages/pkg").exists()
    with pytest.raises(UserError):
        parse_spec("../evil")


def test_builds_and_installs(state: State, tmp_path: Path) -> None:
    state.add("pkg", "1.0", tmp_path)
    _build(state, "pkg", "1.0")
    b = state.find_built("pkg", "1.0", KVER, "x86_64")
    assert b is not None and b.modules[0].file == "pkg.ko" and b.record.inputs is None
    assert [x.kver for x in state.builds("pkg", "1.0")] == [KVER]
    rec = Installed(
        "pkg", "1.0", KVER, "x86_64",
        (InstalledFile("updates/dkms/pkg.ko", "00" * 32, None, ()),), ("updates/dkms",),
    )  # fmt: skip
    state.write_installed(rec)
    assert state.find_installed(KVER, "x86_64", "pkg") == rec
    assert state.installs_of("pkg") == [rec] == state.all_installed(KVER)
    assert state.drop_built("pkg", "1.0", KVER, "x86_64")
    assert not state.drop_built("pkg", "1.0", KVER, "x86_64")
    assert not (state.package_dir("pkg", "1.0") / "built").exists()


def test_journal_and_depmod_marker(state: State) -> None:
    entry = state.journal_file(KVER, "x86_64", "pkg")
    atomic.write_json(entry, {"op": "install"})
    atomic.write_text(state.depmod_marker(KVER), "")
    assert state.journals() == [(KVER, entry)] == state.journals(KVER)
    assert state.kernels_needing_depmod() == [KVER]
    state.clear_journal(entry)
    state.clear_journal(state.depmod_marker(KVER))
    assert state.journals() == [] and not (state.dir / "journal" / KVER).exists()


def test_dkms_status_lines(state: State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dkms 3.0.10's do_status: "added" when nothing matching is built."""
    for name in ("b", "a"):
        state.add(name, "1.0", tmp_path)
    _build(state, "a", "1.0")
    _build(state, "a", "1.0", "6.12.9")
    state.write_installed(Installed("a", "1.0", KVER, "x86_64", (), ()))
    monkeypatch.setenv("EXTMOD_ROOT", str(state.paths.root))

    def status(*argv: str) -> list[str]:
        return dkmsreport.status_lines(dkmscli.Front(dkmscli.parse(["status", *argv])))

    assert status() == [
        f"a/1.0, {KVER}, x86_64: installed",
        "a/1.0, 6.12.9, x86_64: built",
        "b/1.0: added",
    ]
    assert status("-k", "6.12.9") == ["a/1.0, 6.12.9, x86_64: built", "b/1.0: added"]
    assert status("-m", "a", "-k", "9.9") == ["a/1.0: added"]
    assert status("-a", "aarch64", "b") == ["b/1.0: added"]


def _installed_record(state: State, name: str, files: list[dict[str, object]]) -> None:
    rec = {"name": name, "version": "1.0", "created_dirs": [], "files": files}
    atomic.write_json(state.installed_file(KVER, "x86_64", name), rec)


@pytest.mark.parametrize(
    ("path", "original"),
    [
        ("../../../../victim", None),  # climbs out of /lib/modules/KVER
        ("ABS", None),  # absolute: the victim itself
        ("updates/dkms/x.ko", "../../../../../victim"),  # the original to restore climbs
        ("updates/./x.ko", None),  # not normalized
    ],
    ids=["dotdot", "absolute", "original", "dot"],
)
def test_uninstall_refuses_a_record_that_leads_out(
    tmp_path: Path, path: str, original: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 22: an install record edited to name a file elsewhere makes uninstall refuse,
    name the file and the field, exit 3, and leave that file alone."""
    from extmod.ui import cli

    root = tmp_path / "root"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    sha = hashlib.sha256(b"precious").hexdigest()
    (root / "lib/modules" / KVER).mkdir(parents=True)
    state = State(paths.for_invocation(root, {}, 0))
    entry: dict[str, object] = {
        "path": str(victim) if path == "ABS" else path,
        "sha256": sha,
        "original": original,
    }
    _installed_record(state, "evil", [entry])
    rc = cli.main(["--root", str(root), "uninstall", "evil", "-k", KVER])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3, err
    assert len(err) == 1 and err[0].startswith(
        f"extmod: error: {state.installed_file(KVER, 'x86_64', 'evil')}: files[0]."
    )
    assert "leads out of its tree: refused" in err[0]
    assert victim.read_bytes() == b"precious"
    assert state.installed_file(KVER, "x86_64", "evil").exists()  # nothing changed


def test_uninstall_leaves_a_file_whose_dir_became_a_symlink_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record that is fine, but a dir on its path was replaced by a symlink to elsewhere
    since: the file there is left in place and named; the rest of the uninstall goes on."""
    from extmod.ui import cli

    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.ko").write_bytes(b"precious")
    sha = hashlib.sha256(b"precious").hexdigest()
    kdir = root / "lib/modules" / KVER
    (kdir / "updates").mkdir(parents=True)
    (kdir / "updates/dkms").symlink_to(outside)
    state = State(paths.for_invocation(root, {}, 0))
    (tmp_path / "src").mkdir()
    state.add("evil", "1.0", tmp_path / "src")
    _installed_record(state, "evil", [{"path": "updates/dkms/x.ko", "sha256": sha}])
    rc = cli.main(["--root", str(root), "--json", "uninstall", "evil", "--all"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert (outside / "x.ko").read_bytes() == b"precious"
    assert "leads out of" in out.out + out.err
    assert not state.installed_file(KVER, "x86_64", "evil").exists()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (b"", "damaged record: not JSON"),
        (b"[]", "the record: expected an object, found a list"),
        (b"{}", "name: missing"),
        (
            b'{"name": "evil", "version": "1.0", "files": null}',
            "files: expected a list, found null",
        ),
        (
            b'{"name": "evil", "version": "1.0", "files": [{"path": "x.ko"}]}',
            "files[0].sha256: missing",
        ),
        (b'{"name": "evil", "version": "1.0", "files": [7]}', "files[0].: expected an object"),
        (
            b'{"name": "evil", "version": "1.0", "files": [], "created_dirs": ["../x"]}',
            "created_dirs[0]: '../x' leads out",
        ),
        (b'{"name": "ev\\u0000il", "version": "1.0", "files": []}', "name: a NUL byte"),
        (b"\xff\xfe", "damaged record: not UTF-8"),
        (b"[" * 100000, "damaged record: nested too deep"),
    ],
    ids=[
        "empty",
        "list",
        "no-name",
        "files-null",
        "no-sha",
        "file-not-object",
        "dir-climbs",
        "nul",
        "not-utf8",
        "deep",
    ],
)
def test_a_damaged_install_record_is_one_line_exit_3(
    tmp_path: Path, text: bytes, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from extmod.ui import cli

    root = tmp_path / "root"
    (root / "lib/modules" / KVER).mkdir(parents=True)
    state = State(paths.for_invocation(root, {}, 0))
    f = state.installed_file(KVER, "x86_64", "evil")
    f.parent.mkdir(parents=True)
    f.write_bytes(text)
    for argv in (["uninstall", "evil", "-k", KVER], ["status"]):
        rc = cli.main(["--root", str(root), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 3, (argv, err)
        assert len(err) == 1, err
        assert err[0].startswith(f"extmod: error: {f}: ") and field in err[0], err[0]
    assert f.read_bytes() == text
