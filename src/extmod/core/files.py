"""Reading a file someone else may have put there (a config file, a state record): never
blocks on a FIFO or a device, never reads without bound (issue 22: ``--config /dev/zero``
read forever, ``--config FIFO`` hung)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

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
