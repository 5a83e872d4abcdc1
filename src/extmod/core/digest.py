"""Content digests that are cheap to take again: a source tree's digest from per-file
sha256s kept in an index keyed by each file's stat (git's index does the same), so a tree
whose files were not touched is only stat()ed, never read."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from extmod.core import atomic, files


def tree(src: Path, index_file: Path | None = None) -> str:
    """sha256 over every file under ``src`` as a build copies them (files.tree_entries):
    relative path, executable bit and content; a link out of the tree by its text.
    ``index_file`` keeps the per-file hashes between runs; it is rewritten only when
    something changed, and a failure to write it costs speed, never correctness."""
    old: dict[str, list[int | str]] = {}
    if index_file is not None:
        kept = files.read_cache(index_file)
        old = kept if isinstance(kept, dict) else {}
    new: dict[str, list[int | str]] = {}
    h = hashlib.sha256()
    for rel, path, link in files.tree_entries(src):
        if link is not None:  # a link out of the tree: the build keeps it as a link
            h.update(f"{rel}\0link\0{link}\n".encode())
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue  # gone since it was listed: a build copies nothing for it either
        key: list[int | str] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = old.get(rel)
        if isinstance(entry, list) and len(entry) == 5 and entry[:4] == key:
            sha = str(entry[4])
        else:
            sha = file(path)
        new[rel] = [*key, sha]
        h.update(f"{rel}\0{st.st_mode & 0o111:o}\0{sha}\n".encode())
    if index_file is not None and new != old:
        try:
            atomic.write_text(index_file, json.dumps(new, sort_keys=True))
        except OSError:
            pass
    return h.hexdigest()


def file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def of(*parts: object) -> str:
    """sha256 of a JSON rendering of ``parts`` (str() for what JSON cannot hold)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
