"""The build store's own rules (issue 23, fast): an object is filed whole, read back only
when its meta reads and every module matches its sum (else it is a miss and dropped), and
the store keeps to its bounds, least recently used first."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from extmod.core import paths
from extmod.store import builds

DIGEST = "ab" * 32
META = builds.Meta(
    modules=(builds.ModuleMeta("a", "a", "/extra", True),),
    load_check=(),
    exports=("sym",),
    compiler="gcc-12 (Debian 12.2.0-14) 12.2.0",
    reproducer="make ...",
    make_vars=("CC=gcc-12",),
    seconds=1.5,
)


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
    assert got is not None and got.digest == DIGEST and got.meta == META
    (m,) = got.modules
    assert m.meta.dest_name == "a" and m.meta.strip and m.path.read_bytes() == ko.read_bytes()
    assert not builds.put(p, DIGEST, META, {"a": ko})  # the same build: left alone
    assert builds.get(p, "cd" * 32) is None


def test_a_changed_module_is_a_miss_and_is_dropped(tmp_path: Path) -> None:
    p, _ = _store(tmp_path)
    obj = builds.object_dir(p, DIGEST)
    (obj / "modules/a.ko").write_bytes(b"\x7fELF poisoned")
    with pytest.raises(builds.Damaged, match=r"modules/a\.ko: its bytes are not the ones filed"):
        builds.get(p, DIGEST)
    assert not obj.exists()
    assert builds.get(p, DIGEST) is None  # dropped: a plain miss from then on


def _meta(top: dict[str, object] | None = None, **change: object) -> bytes:
    data = META.to_json(DIGEST, {"a": "0" * 64})
    module = {**data["modules"][0], **change}
    return json.dumps({**data, "modules": [module], **(top or {})}).encode()


# damage of object.json -> the field the one line names
DAMAGE = {
    b"": "object.json: damaged record",
    b"[]": "object.json: the record: expected an object",
    b'{"inputs": "x"}': "object.json: inputs: not the digest",
    json.dumps({"inputs": "cd" * 32}).encode(): "object.json: inputs: not the digest",
    _meta(dest_location="/../../../../etc"): r"modules\[0\]\.dest_location: .* leads out",
    _meta(dest_location="extra"): r"modules\[0\]\.dest_location: .* leads out",
    _meta(dest_location="/extra/../.."): r"modules\[0\]\.dest_location",
    _meta(dest_location=7): r"modules\[0\]\.dest_location: expected a string",
    _meta(dest_name="../../a"): r"modules\[0\]\.dest_name: .* not a valid name",
    _meta(built_name="a/../../b"): r"modules\[0\]\.built_name: .* not a valid name",
    _meta(strip="yes"): r"modules\[0\]\.strip: expected true/false",
    _meta(sha256="../x"): r"modules\[0\]\.sha256: .* not a sha256",
    _meta(top={"exports": [1]}): r"object\.json: exports\[0\]: expected a string",
    _meta(top={"seconds": "fast"}): r"object\.json: seconds: expected a number",
    _meta(top={"modules": {"a": 1}}): r"object\.json: modules: expected a list",
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=range(len(DAMAGE)))
def test_a_damaged_or_escaping_meta_is_a_miss_named_by_file_and_field(
    tmp_path: Path, damage: bytes
) -> None:
    p, _ = _store(tmp_path)
    obj = builds.object_dir(p, DIGEST)
    (obj / "object.json").write_bytes(damage)
    with pytest.raises(builds.Damaged) as e:
        builds.get(p, DIGEST)
    line = str(e.value)
    assert "\n" not in line and re.search(DAMAGE[damage], line), line
    assert str(obj / "object.json") in line or "modules/a.ko" in line
    assert not obj.exists()


def test_an_object_that_is_a_symlink_is_dropped_not_followed(tmp_path: Path) -> None:
    p, _ = _store(tmp_path)
    obj = builds.object_dir(p, DIGEST)
    elsewhere = tmp_path / "elsewhere"
    obj.rename(elsewhere)
    obj.symlink_to(elsewhere)
    with pytest.raises(builds.Damaged, match="a symlink"):
        builds.get(p, DIGEST)
    assert not obj.is_symlink() and (elsewhere / "object.json").is_file()


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
