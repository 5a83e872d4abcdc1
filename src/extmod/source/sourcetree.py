"""A package's files before they are read or copied: a dkms.conf that bash would misread
(NUL, too large), a FIFO or device in the tree, a file this process cannot read, a
dkms.conf that is a link out of the tree; each named with the file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from extmod.core import files
from extmod.core.errors import UserError

_MAX_CONF = 1 << 20


def check_text(f: Path) -> None:
    """Refuse what bash would misread or choke on, with the file and line named."""
    try:
        size = f.stat().st_size
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"{f}: cannot read: {e.strerror}") from None
    if size > _MAX_CONF:
        raise UserError(f"{f}: {size} bytes: larger than {_MAX_CONF} bytes, not a dkms.conf")
    try:
        data = f.read_bytes()
    except OSError as e:
        raise UserError(f"{f}: cannot read: {e.strerror}") from None
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise UserError(f"{f}: line {line}: a NUL byte: not a text file")


def check_links(src: Path) -> None:
    """Every file of a source tree must be a regular one this process can read. Symlinks
    are not checked here: one that stays in the tree is copied as what it points to, one
    that leads out of it (Debian 13's iptables-netflow-dkms has README.gz ->
    /usr/share/doc/…, present wherever docs are installed) stays a link, never followed
    or read, as DKMS's ``cp -a`` keeps it (files.tree_entries)."""
    top = src.resolve()
    conf = src / "dkms.conf"  # read by extmod itself: it must be the package's own
    if conf.is_symlink() and conf.exists() and not files.inside(conf, top):
        raise UserError(f"{conf}: symlink leads outside the source tree (to {conf.resolve()})")
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                continue
            if not (p.is_file() or p.is_dir()):
                # A FIFO would hang the copy; a device would copy its content.
                raise UserError(
                    f"{p}: not a regular file or dir (a FIFO, socket or "
                    f"device has no place in a source tree)"
                )
            if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
                raise UserError(f"{p}: cannot read it (permission denied)")


def require_regular(conf: Path) -> None:
    """dkms.conf exists and is a regular file (a FIFO would hang bash, /dev/zero never
    ends)."""
    if not conf.is_file():
        if conf.exists() or conf.is_symlink():
            raise UserError(f"{conf}: not a regular file")
        raise UserError(f"{conf}: no such file")
    if not stat.S_ISREG(conf.stat().st_mode):
        raise UserError(f"{conf}: not a regular file")
