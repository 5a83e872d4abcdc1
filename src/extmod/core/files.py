"""Reading a file someone else may have put there (a config file, a state record): never
blocks on a FIFO or a device, never reads without bound (issue 22: ``--config /dev/zero``
read forever, ``--config FIFO`` hung)."""

from __future__ import annotations

import copy
import errno
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from extmod.core.errors import UserError


def read_regular(path: Path, limit: int, what: str) -> bytes | None:
    """The bytes of ``path`` (symlinks followed), None when it does not exist; a
    ``UserError`` naming the file when it is not a regular file, is larger than ``limit``
    or cannot be read. ``what``: the kind of file, for the message ("config file")."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            return None
        raise UserError(f"{path}: cannot read {what}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path}: {what} is not a regular file")
        if st.st_size > limit:
            raise UserError(f"{path}: {st.st_size} bytes: larger than any {what}")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew while read
                raise UserError(f"{path}: larger than any {what}")
        return b"".join(chunks)
    except OSError as e:
        raise UserError(f"{path}: cannot read {what}: {e.strerror}") from None
    finally:
        os.close(fd)


# A kept cache entry (a hash index of a big source tree) is a few MiB at most.
CACHE_MAX_BYTES = 64 << 20


def read_cache(path: Path) -> Any | None:
    """The JSON of a file extmod keeps only to save work or to advise (a hash index, a
    compiler's ``--version``, a remembered failure, a verify record): None when it is
    missing or damaged in any way (not a regular file, too large, not UTF-8, not JSON), so
    the caller does the work again. Its shape is the caller's to check. Records whose loss
    would lose a file go through ``store.schema`` instead, which refuses them by name."""
    try:
        raw = read_regular(path, CACHE_MAX_BYTES, "cache file")
        return None if raw is None else json.loads(raw.decode("utf-8"))
    except (UserError, ValueError, RecursionError):
        return None


def inside(path: Path, top: Path) -> bool:
    target = path.resolve()
    return target == top or top in target.parents


def tree_entries(src: Path) -> Iterator[tuple[str, Path, str | None]]:
    """A source tree's files in a fixed order, as a build copies them: ``(relative path,
    path, None)`` for a regular file (through a symlink that stays in the tree, too), and
    ``(relative path, path, LINK)`` for a symlink that leads out of the tree: it is kept as
    a link, as DKMS's ``cp -a`` keeps it, and never followed or read (Debian's
    ``README.gz -> /usr/share/doc/…``; a link to ``/`` or to a FIFO costs nothing). Dirs
    are entered only inside the tree; dangling links are left out."""
    top = src.resolve()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        here = Path(dirpath)
        entered = []
        for name in sorted(dirnames):
            p = here / name
            if p.is_symlink() and not inside(p, top):
                yield str(p.relative_to(top)), p, os.readlink(p)
            else:
                entered.append(name)
        dirnames[:] = entered
        for name in sorted(filenames):
            p = here / name
            if p.is_symlink():
                if not p.exists():
                    continue
                if not inside(p, top):
                    yield str(p.relative_to(top)), p, os.readlink(p)
                    continue
            if p.is_file():
                yield str(p.relative_to(top)), p, None


class UnsafeMember(tarfile.TarError):
    """An archive entry that would leave the dir it is unpacked into, or is no plain file."""


def unpack(
    tar: tarfile.TarFile,
    dest: Path,
    members: list[tarfile.TarInfo] | None = None,
    absolute_links: bool = False,
) -> None:
    """``tar``'s members into ``dest`` as Python's ``data`` filter keeps them, on every
    Python extmod runs on (Debian 12's 3.11.2 has no filter: the .deb's guard failed there
    with a TypeError): each member below ``dest`` (no absolute or ``..`` name, no parent
    that a link made lead out), a file, dir, symlink or hard link only (no device or FIFO),
    no link that climbs out, modes without setuid, setgid, sticky or group/other write,
    owned by the extracting user. ``absolute_links``: a symlink may name an absolute path
    (a Debian package's ``build -> /usr/src/...``, read inside a root, never followed
    here). Raises UnsafeMember naming the entry."""
    top = os.path.realpath(dest)
    trusted = python_filter()
    for m in tar.getmembers() if members is None else members:
        m = _plain(m, top, absolute_links)
        tar.extract(m, top, set_attrs=not m.issym(), **trusted)  # type: ignore[arg-type]


def python_filter() -> dict[str, str]:
    """What ``extract`` is told of Python's own filters, where it has them (3.11.4+): the
    entry is checked here, so no more (and 3.14's default would refuse absolute links)."""
    return {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}


def _plain(m: tarfile.TarInfo, top: str, absolute_links: bool) -> tarfile.TarInfo:
    name = m.name
    why = ""
    if name.startswith("/") or ".." in name.split("/"):
        why = "leads out"
    elif not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
        why = "is not a file, dir or link"
    elif not _below(os.path.realpath(os.path.join(top, os.path.dirname(name))), top):
        why = "is written through a link that leads out"
    elif m.issym() and not (absolute_links and m.linkname.startswith("/")):
        target = os.path.normpath(os.path.join(os.path.dirname(name), m.linkname))
        if m.linkname.startswith("/") or target.startswith(".."):
            why = f"is a link to {m.linkname!r}, out of it"
    elif m.islnk():
        target = os.path.normpath(m.linkname)
        if m.linkname.startswith("/") or target.startswith(".."):
            why = f"is a hard link to {m.linkname!r}, out of it"
    if why:
        raise UnsafeMember(f"the entry {name!r:.200} {why}")
    plain = copy.copy(m)
    plain.mode = m.mode & 0o755
    plain.uid = plain.gid = os.geteuid()
    plain.uname = plain.gname = ""
    return plain


def _below(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")
