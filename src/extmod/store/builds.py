"""The local build store (issue 23): finished builds kept by their inputs digest.

A build is a function of its inputs (``builder.inputs.inputs_digest``: the source tree, the
evaluated dkms.conf, the kernel's release, config and Module.symvers, the compiler, the
signing certificate, [build] environment, the builds of its BUILD_DEPENDS, extmod's
version). When a build succeeds its modules are filed here as make left them (not yet
stripped, signed or compressed) with what the build record needs; a later build with the
same digest (a re-add after ``remove``, an ``unbuild``, ``clean``, ``apt-get install
--reinstall``) takes them from here, strips, signs and compresses them as a build would, and
installs, with no make and no compiler. Failed builds are never filed.

Layout: ``STATE/store/DD/DIGEST/`` with ``object.json`` (the meta, read back through
``schema`` like every record) and ``modules/DEST_NAME.ko``. An object is written whole in a
dir beside and renamed; its mtime is its last use (bounded by ``store.max_size`` and
``store.max_age``, least recently used first). Every module's sha256 is in the meta and is
checked before use: a damaged or changed object is a miss, never an install.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extmod.core import atomic, digest, faults
from extmod.core.errors import UserError
from extmod.core.paths import Paths
from extmod.store import schema


@dataclass(frozen=True)
class ModuleMeta:
    """One module of a filed build: its names, where it goes, whether it is stripped."""

    built_name: str
    dest_name: str
    dest_location: str
    strip: bool


@dataclass(frozen=True)
class Meta:
    """What a filed build's record needs besides its modules' bytes (``object.json``)."""

    modules: tuple[ModuleMeta, ...]
    load_check: tuple[str, ...]
    exports: tuple[str, ...]
    compiler: str | None
    reproducer: str | None
    make_vars: tuple[str, ...]
    seconds: float | None  # what the compile took

    def to_json(self, inputs: str, sums: dict[str, str]) -> dict[str, Any]:
        return {
            "inputs": inputs,
            "filed": time.time(),
            "modules": [
                {**dataclasses.asdict(m), "sha256": sums[m.dest_name]} for m in self.modules
            ],
            "load_check": list(self.load_check),
            "exports": list(self.exports),
            "compiler": self.compiler,
            "reproducer": self.reproducer,
            "make_vars": list(self.make_vars),
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class StoredModule:
    meta: ModuleMeta
    path: Path  # the module as make left it
    sha256: str


@dataclass(frozen=True)
class Stored:
    """A finished build, as filed."""

    digest: str
    meta: Meta
    modules: tuple[StoredModule, ...]


class Damaged(Exception):
    """A local object that is not taken (and was dropped): the file and field, in one line."""


def object_dir(paths: Paths, inputs: str) -> Path:
    return paths.build_store / inputs[:2] / inputs


def put(paths: Paths, inputs: str, meta: Meta, files: dict[str, Path]) -> bool:
    """File a finished build (``files``: DEST_NAME -> the module as make left it); False
    when an object with this digest is there already (the same build: left alone)."""
    final = object_dir(paths, inputs)
    if final.is_dir():
        return False
    with filing(final) as tmp:
        (tmp / "modules").mkdir()
        sums = {}
        for name, src in files.items():
            shutil.copyfile(src, tmp / "modules" / f"{name}.ko")
            sums[name] = digest.file(tmp / "modules" / f"{name}.ko")
            faults.point("store:filing")
        atomic.write_json(tmp / "object.json", meta.to_json(inputs, sums))
    return True


@contextmanager
def filing(final: Path) -> Iterator[Path]:
    """A new dir beside ``final``, renamed to it when the block ends well, else removed.
    The filing holds a flock on the dir it files in (``DD/``, one of 256), so one filing
    at a time writes there: a temp dir found there then is one whose writer died (SIGKILL,
    a power cut), and is removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for dead in final.parent.glob(".*.extmod-tmp"):
            shutil.rmtree(dead, ignore_errors=True)
        tmp = atomic.new_dir_beside(final)
        try:
            yield tmp
            os.rename(tmp, final)
        except FileExistsError:
            pass  # another command filed the same object just before
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:  # (rename onto a dir another command filed)
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        os.close(fd)


def get(paths: Paths, inputs: str) -> Stored | None:
    """The build filed under ``inputs``, its modules checked against their sums and its
    use remembered; None when there is none. A damaged object (a field that does not read
    or leads out of its tree, a module changed or missing) is dropped, and ``Damaged``
    says which file and field: a miss, and the build is made again (issue 32)."""
    d = object_dir(paths, inputs)
    meta = d / "object.json"
    if not d.is_dir() and not d.is_symlink():
        return None
    try:
        stored = _read(d, meta, inputs)
        for m in stored.modules:
            if digest.file(m.path) != m.sha256:
                raise UserError(f"{m.path}: its bytes are not the ones filed (sha256)")
    except (UserError, OSError) as e:
        _drop(d)
        raise Damaged(str(e)) from None
    os.utime(d)
    return stored


def _drop(d: Path) -> None:
    if d.is_symlink():
        d.unlink(missing_ok=True)
    else:
        shutil.rmtree(d, ignore_errors=True)


def _read(d: Path, meta: Path, inputs: str) -> Stored:
    if d.is_symlink():
        raise UserError(f"{d}: a symlink where a stored build belongs")
    r = schema.Fields(meta, schema.load(meta))
    if r.text("inputs") != inputs:
        raise r.bad("inputs", "not the digest this object is filed under")
    modules = []
    for m in r.objects("modules"):
        name = m.name("dest_name")
        path = d / "modules" / f"{name}.ko"
        if not path.is_file() or path.is_symlink():
            raise m.bad("dest_name", f"{path} is missing")
        module = ModuleMeta(
            m.name("built_name"), name, m.location("dest_location"), m.boolean("strip") is not False
        )
        modules.append(StoredModule(module, path, m.sha256("sha256")))
    meta_of = Meta(
        tuple(m.meta for m in modules),
        r.texts("load_check"),
        r.texts("exports"),
        r.opt_text("compiler"),
        r.opt_text("reproducer"),
        r.texts("make_vars"),
        r.number("seconds"),
    )
    return Stored(inputs, meta_of, tuple(modules))


@dataclass(frozen=True)
class Entry:
    inputs: str
    path: Path
    files: int
    size: int
    last_used: float


def entries(paths: Paths) -> list[Entry]:
    found = []
    for d in sorted(paths.build_store.glob("??/*")) if paths.build_store.is_dir() else []:
        if not d.is_dir() or ".extmod-tmp" in d.name:
            continue
        files = [p for p in d.rglob("*") if p.is_file()]
        found.append(
            Entry(d.name, d, len(files), sum(p.stat().st_size for p in files), d.stat().st_mtime)
        )
    return found


def prune(paths: Paths, max_size: int, max_age: int, now: float | None = None) -> list[Entry]:
    """Objects unused for ``max_age`` seconds, then the least recently used beyond
    ``max_size`` bytes (0: no bound); the ones removed."""
    now = time.time() if now is None else now
    objects = sorted(entries(paths), key=lambda e: e.last_used)
    total = sum(e.size for e in objects)
    removed = []
    for e in objects:
        if (max_age and now - e.last_used > max_age) or (max_size and total > max_size):
            shutil.rmtree(e.path, ignore_errors=True)
            total -= e.size
            removed.append(e)
    return removed


def clear(paths: Paths) -> list[Path]:
    """Every object (``clean --all``)."""
    gone = [e.path for e in entries(paths)]
    shutil.rmtree(paths.build_store, ignore_errors=True)
    return gone
