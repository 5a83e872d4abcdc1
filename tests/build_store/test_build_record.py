"""build.json read back (fast): what the last release wrote still reads, every field."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from extmod.core.errors import UserError


def test_build_record_reads_what_the_last_release_wrote(tmp_path: Path) -> None:
    """build.json as release 0.1.0 wrote it (build.py's dict; migrate.py's had fewer keys and
    imported_from) reads into the typed record and writes back the same keys."""
    from extmod.store.state import BuildRecord, BuiltModule

    module = {
        "built_name": "hello",
        "dest_name": "hello",
        "dest_location": "/updates/dkms",
        "file": "hello.ko",
        "sha256": "ab" * 32,
    }
    compiled = {
        "name": "pair", "version": "1.0", "kernel": "6.1.0-56-amd64", "arch": "x86_64",
        "kernel_tree": "/usr/src/linux-headers-6.1.0-56-amd64", "kernel_identity": "k1",
        "inputs": "d1", "compiler": "gcc-12 (Debian 12.2.0-14) 12.2.0",
        "reproducer": "make -C ...", "make_vars": ["CC=gcc-12"], "signed": True,
        "compressed": None, "thinlto_cache_dir": None, "seconds": 2.5,
        "started_at": 1.0, "built": "2026-11-24T10:00:00Z", "load_check": [],
        "exports": ["hello_fn"], "modules": [module],
    }  # fmt: skip
    imported = {
        "name": "pair", "version": "1.0", "kernel": "6.1.0-56-amd64", "arch": "x86_64",
        "kernel_tree": None, "kernel_identity": None, "inputs": None,
        "imported_from": "/var/lib/dkms/pair/1.0/6.1.0-56-amd64/x86_64/module",
        "built": "2026-11-24T10:00:00Z", "load_check": [], "exports": [],
        "modules": [module], "a_key_of_a_later_release": 1,
    }  # fmt: skip
    for data in (compiled, imported):
        rec = BuildRecord.from_json(data, tmp_path / "build.json")
        assert rec.modules == (BuiltModule(**module),)
        back = rec.to_json()
        # every key written comes back with its value (issue 22: comparing only the keys on
        # both sides let a field dropped on write pass); a later release's key is left out
        known = {k: v for k, v in data.items() if k != "a_key_of_a_later_release"}
        assert {k: back.get(k, "MISSING") for k in known} == known
        assert set(back) == {f.name for f in fields(BuildRecord)}
        assert BuildRecord.from_json(back, tmp_path / "build.json") == rec
    rec = BuildRecord.from_json(compiled, tmp_path / "build.json")
    assert (rec.inputs, rec.exports, rec.signed) == ("d1", ("hello_fn",), True)
    where = re.escape(str(tmp_path / "build.json"))
    with pytest.raises(UserError, match=f"^{where}: kernel: missing$"):
        BuildRecord.from_json({"name": "x", "version": "1"}, tmp_path / "build.json")
    with pytest.raises(UserError, match=f"^{where}: modules\\[0\\].sha256: expected a string"):
        BuildRecord.from_json(
            {**compiled, "modules": [{**module, "sha256": None}]}, tmp_path / "build.json"
        )
