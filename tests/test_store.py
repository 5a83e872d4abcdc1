"""The build store's own rules (issue 23, fast): an object is filed whole, read back only
when its meta reads and every module matches its sum (else it is a miss and dropped), and
the store keeps to its bounds, least recently used first."""

from __future__ import annotations

import json
import os
from pathlib import Path

from extmod.core import paths
from extmod.store import builds

DIGEST = "ab" * 32
META = {
    "modules": [{"built_name": "a", "dest_name": "a", "dest_location": "/extra", "strip": True}],
    "load_check": [],
    "exports": ["sym"],
    "compiler": "gcc-12 (Debian 12.2.0-14) 12.2.0",
    "reproducer": "make ...",
    "make_vars": ["CC=gcc-12"],
    "seconds": 1.5,
}


def _store(tmp_path: Path, digest: str = DIGEST, size: int = 100) -> tuple[paths.Paths, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = paths.for_invocation(tmp_path / "root", {}, 0)
    ko = tmp_path / f"a-{digest[:4]}.ko"
    ko.write_bytes(b"\x7fELF" + b"x" * size)
    assert builds.put(p, digest, META, {"a": ko})
    return p, ko


def test_a_filed_build_reads_back(tmp_path: Path) -> None:
    p, ko = _store(tmp_path)
    got = builds.get(p, DIGEST)
    assert got is not None and got.digest == DIGEST and got.exports == ("sym",)
    (m,) = got.modules
    assert m.dest_name == "a" and m.strip and m.path.read_bytes() == ko.read_bytes()
    assert not builds.put(p, DIGEST, META, {"a": ko})  # the same build: left alone
    assert builds.get(p, "cd" * 32) is None


def test_a_changed_module_is_a_miss_and_is_dropped(tmp_path: Path) -> None:
    p, _ = _store(tmp_path)
    obj = builds.object_dir(p, DIGEST)
    (obj / "modules/a.ko").write_bytes(b"\x7fELF poisoned")
    assert builds.get(p, DIGEST) is None and not obj.exists()


def test_a_damaged_or_foreign_meta_is_a_miss(tmp_path: Path) -> None:
    for damage in (
        b"",
        b"[]",
        b'{"inputs": "x"}',
        json.dumps({**META, "inputs": "cd" * 32}).encode(),
    ):
        p, _ = _store(tmp_path / str(len(damage)))
        obj = builds.object_dir(p, DIGEST)
        (obj / "object.json").write_bytes(damage)
        assert builds.get(p, DIGEST) is None, damage
        assert not obj.exists()


def test_the_store_keeps_to_its_bounds_least_recently_used_first(tmp_path: Path) -> None:
    old, new = "01" * 32, "02" * 32
    p, _ = _store(tmp_path, old, 1000)
    _store(tmp_path, new, 1000)
    os.utime(builds.object_dir(p, old), (1000, 1000))
    assert builds.get(p, old) is not None  # a use: now the most recent
    os.utime(builds.object_dir(p, new), (2000, 2000))
    one = builds.entries(p)[0].size
    gone = builds.prune(p, max_size=one + 500, max_age=0)
    assert [e.inputs for e in gone] == [new]
    assert [e.inputs for e in builds.entries(p)] == [old]
    os.utime(builds.object_dir(p, old), (1000, 1000))
    assert [e.inputs for e in builds.prune(p, 0, 3600)] == [old]
    assert builds.entries(p) == []
    _store(tmp_path, new, 10)
    assert builds.clear(p) and builds.entries(p) == []
