"""Every state record reader against any bytes (issue 22, fast): a record file holding
whatever a crash, a full disk, another tool or a hostile user left is either read back as a
record of the right shape or refused with a ``UserError`` that names the file; never another
exception, and never a path that leads out of its tree. Hypothesis generates the bytes, the
JSON values and the near-miss records (a valid record with one field replaced)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extmod.builder import builddir
from extmod.core import paths
from extmod.core.errors import UserError
from extmod.store import schema
from extmod.store.state import BuildRecord, Installed, State

KVER = "6.1.0-56-amd64"
SHA = "ab" * 32

GOOD: dict[str, dict[str, Any]] = {
    "installed": {
        "name": "pkg",
        "version": "1.0",
        "created_dirs": ["updates", "updates/dkms"],
        "files": [
            {
                "path": "updates/dkms/a.ko",
                "sha256": SHA,
                "original": None,
                "shadows": ["kernel/a.ko"],
                "stamp": [1, 2, 3],
            }
        ],
        "withheld": [],
    },
    "build": {
        "name": "pkg",
        "version": "1.0",
        "kernel": KVER,
        "arch": "x86_64",
        "built": "2026-12-05T00:00:00Z",
        "modules": [
            {
                "built_name": "a",
                "dest_name": "a",
                "dest_location": "/updates/dkms",
                "file": "a.ko",
                "sha256": SHA,
            }
        ],
        "signed": True,
        "seconds": 1.5,
    },
    "added": {"name": "pkg", "version": "1.0", "source": "usr/src/pkg-1.0", "added": "x"},
    "journal": {"op": "install", "moves": [["kernel/a.ko", "kernel/a.ko"]]},
}
GOOD["journal"]["record"] = {**GOOD["installed"], "kernel": KVER, "arch": "x86_64"}


def _reader(kind: str, root: Path) -> tuple[Path, Callable[[], object]]:
    """(the file a kind of record lives in, how extmod reads it)."""
    state = State(paths.for_invocation(root, {}, 0))
    if kind == "installed":
        return state.installed_file(KVER, "x86_64", "pkg"), lambda: state.find_installed(
            KVER, "x86_64", "pkg"
        )
    if kind == "build":
        d = state.finished_dir("pkg", "1.0", KVER, "x86_64")
        return d / "build.json", lambda: state.find_built("pkg", "1.0", KVER, "x86_64")
    if kind == "added":
        return state.package_dir("pkg", "1.0") / "added.json", lambda: state.find_added(
            "pkg", "1.0"
        )
    journal = state.journal_file(KVER, "x86_64", "pkg")
    return journal, lambda: _read_journal(journal)


def _read_journal(journal: Path) -> object:
    """What ``journaled.recover`` and ``status`` read of a journal."""
    j = schema.Fields(journal, schema.load(journal))
    return Installed.from_json(j.record("record").data, journal), j.text("op")


def _check(kind: str, root: Path, raw: bytes) -> None:
    f, read = _reader(kind, root)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(raw)
    try:
        got = read()
    except UserError as e:
        assert str(e).startswith(f"{f}: "), str(e)
        assert "\n" not in str(e)
        return
    if isinstance(got, Installed) or (isinstance(got, tuple) and isinstance(got[0], Installed)):
        rec = got if isinstance(got, Installed) else got[0]
        assert isinstance(rec, Installed)
        for x in rec.files:
            assert schema.confined(x.path) and (x.original is None or schema.confined(x.original))
        assert all(schema.confined(d) for d in rec.created_dirs)
    elif isinstance(got, BuildRecord):
        assert all("/" not in m.file and schema.confined(m.file) for m in got.modules)


KINDS = list(GOOD)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
FIELD_VALUES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.sampled_from(["../x", "/etc/passwd", "a/../../b", "", ".", "a//b", "x\0y", "ab" * 32])
    | st.lists(st.text() | st.integers() | st.none(), max_size=3)
    | st.dictionaries(st.text(), st.text(), max_size=2)
)
FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("kind", KINDS)
def test_the_good_record_reads_back(kind: str, tmp_path: Path) -> None:
    f, read = _reader(kind, tmp_path)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(GOOD[kind]))
    assert read() is not None


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(raw=st.binary(max_size=300))
def test_any_bytes(kind: str, tmp_path: Path, raw: bytes) -> None:
    _check(kind, tmp_path, raw)


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(value=JSON)
def test_any_json(kind: str, tmp_path: Path, value: object) -> None:
    _check(kind, tmp_path, json.dumps(value).encode())


def _paths_in(record: object, prefix: str = "") -> list[list[str | int]]:
    """Where a value can be replaced in a record: every key and list index, depth first."""
    out: list[list[str | int]] = []
    items: list[tuple[str | int, object]] = []
    if isinstance(record, dict):
        items = list(record.items())
    elif isinstance(record, list):
        items = list(enumerate(record))
    for k, v in items:
        out.append([k])
        out += [[k, *rest] for rest in _paths_in(v)]
    return out


def _replaced(record: Any, where: list[str | int], value: object) -> Any:
    copy = json.loads(json.dumps(record))
    node = copy
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    return copy


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(data=st.data())
def test_a_good_record_with_one_field_replaced(kind: str, tmp_path: Path, data: Any) -> None:
    where = data.draw(st.sampled_from(_paths_in(GOOD[kind])))
    value = data.draw(FIELD_VALUES)
    _check(kind, tmp_path, json.dumps(_replaced(GOOD[kind], where, value)).encode())


@pytest.mark.parametrize(
    ("kind", "where", "value", "field"),
    [
        ("installed", ["files", 0, "path"], "../../../etc/passwd", "files[0].path"),
        ("installed", ["files", 0, "path"], "/etc/passwd", "files[0].path"),
        ("installed", ["files", 0, "original"], "a/../../b", "files[0].original"),
        ("installed", ["created_dirs", 1], "..", "created_dirs[1]"),
        ("build", ["modules", 0, "file"], "../a.ko", "modules[0].file"),
        ("build", ["modules", 0, "file"], "sub/a.ko", "modules[0].file"),
        ("added", ["source"], "../../etc", "source"),
        ("journal", ["moves", 0, 1], "../../x", "moves[0]"),
        ("journal", ["record", "files", 0, "path"], "../x", "files[0].path"),
    ],
)
def test_a_path_out_of_its_tree_is_refused_by_name(
    kind: str, where: list[str | int], value: str, field: str, tmp_path: Path
) -> None:
    f, read = _reader(kind, tmp_path)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(_replaced(GOOD[kind], where, value)))
    if kind == "journal" and where[0] == "moves":
        from extmod.deploy import journaled

        read = lambda: journaled._moves(schema.Fields(f, schema.load(f)))  # noqa: E731
    with pytest.raises(UserError) as e:
        read()
    assert str(e.value).startswith(f"{f}: {field}"), str(e.value)


# -- files kept only to save work or to advise: damage is a miss, never an error -------------


def _cache_readers(tmp: Path) -> dict[str, tuple[Path, Callable[[], object]]]:
    """(the file, a call that reads it as extmod does) for every cache-type file."""
    from extmod.core import digest
    from extmod.kernel import toolchain
    from extmod.source import package
    from extmod.store import failures, status

    src = tmp / "src"
    src.mkdir(exist_ok=True)
    (src / "a.c").write_text("int a;\n")
    state = State(paths.for_invocation(tmp / "root", {}, 0))
    rec = Installed.from_json(GOOD["journal"]["record"], tmp / "rec.json")
    verify = status.verification_file(state, KVER, "x86_64", "pkg")
    prebuilt = tmp / "root" / status.PREBUILT_DIR / "pkg.json"
    return {
        "source index": (tmp / "index.json", lambda: digest.tree(src, tmp / "index.json")),
        "build manifest": (
            tmp / "man.json",
            lambda: builddir.sync(src, tmp / "t", tmp / "man.json"),
        ),
        "compiler memo": (
            tmp / "cc.json",
            lambda: toolchain.VersionMemo(tmp / "cc.json").first_line("/usr/bin/gcc"),
        ),
        "dkms.conf memo": (tmp / "memo.json", lambda: package._memo_read(tmp / "memo.json", "k")),
        "remembered failure": (
            failures._file(state.paths, "pkg", "1", KVER),
            lambda: failures.find(state.paths, "pkg", "1", KVER),
        ),
        "verify record": (verify, lambda: status.verified(state, rec)),
        "exported record": (prebuilt, lambda: status.prebuilt(tmp / "root")),
    }


CACHE_KINDS = [
    "source index",
    "build manifest",
    "compiler memo",
    "dkms.conf memo",
    "remembered failure",
    "verify record",
    "exported record",
]


def _check_cache(kind: str, tmp: Path, raw: bytes) -> None:
    f, read = _cache_readers(tmp)[kind]
    f.parent.mkdir(parents=True, exist_ok=True)
    f.unlink(missing_ok=True)
    f.write_bytes(raw)
    read()  # any exception fails the test


# A cache reader either uses what it finds or does the work again: fewer examples do.
CACHE = settings(FAST, max_examples=50)


@pytest.mark.parametrize("kind", CACHE_KINDS)
@CACHE
@given(value=JSON)
def test_a_cache_file_with_any_json_is_a_miss(kind: str, tmp_path: Path, value: object) -> None:
    _check_cache(kind, tmp_path, json.dumps(value).encode())


@pytest.mark.parametrize("kind", CACHE_KINDS)
@CACHE
@given(raw=st.binary(max_size=200))
def test_a_cache_file_with_any_bytes_is_a_miss(kind: str, tmp_path: Path, raw: bytes) -> None:
    _check_cache(kind, tmp_path, raw)


@pytest.mark.parametrize("kind", CACHE_KINDS)
def test_a_cache_file_that_is_a_fifo_is_never_opened(kind: str, tmp_path: Path) -> None:
    import os
    import signal

    f, read = _cache_readers(tmp_path)[kind]
    f.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(f)
    signal.alarm(20)  # a blocking open would hang here: fail instead
    try:
        read()
    finally:
        signal.alarm(0)


def test_every_json_read_goes_through_one_of_the_two_readers() -> None:
    """store/schema.load (records: damage refused by name) and core/files.read_cache (caches:
    damage is a miss). A new reader that calls json.load itself skips both."""
    src = Path(paths.__file__).resolve().parent.parent
    direct = [
        str(p.relative_to(src))
        for p in sorted(src.rglob("*.py"))
        for line in p.read_text().splitlines()
        if "json.load" in line
    ]
    assert direct == ["core/files.py", "store/schema.py"], direct


@pytest.mark.parametrize(
    "name", ["../outside", "/OUT/outside", "link/outside", "sub/../../outside"]
)
def test_a_damaged_build_manifest_never_removes_a_file_outside_the_tree(
    name: str, tmp_path: Path
) -> None:
    """The sync of a package into its build tree removes the files a kept manifest names
    and the source no longer has. A manifest that names a path out of the tree (by ``..``,
    absolute, or through a symlinked dir) removes nothing there."""
    from extmod.core import digest

    src, tree = tmp_path / "src", tmp_path / "tree"
    src.mkdir()
    (src / "a.c").write_text("int a;\n")
    tree.mkdir()
    (tree / "link").symlink_to(tmp_path)
    outside = tmp_path / "outside"
    outside.write_text("keep me\n")
    manifest = tmp_path / "man.json"
    manifest.write_text(json.dumps({name.replace("/OUT", str(tmp_path)): "0" * 64}))
    builddir.sync(src, tree, manifest)
    assert outside.read_text() == "keep me\n"
    assert (tree / "a.c").is_file() and json.loads(manifest.read_text()) == {
        "a.c": digest.file(src / "a.c")
    }
