"""Writes that are all-or-nothing: a temp file or dir beside the target, then rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def _via_temp(dest: Path, mode: int, fill: Callable[[BinaryIO], object], durable: bool) -> None:
    """Write ``dest`` through a temp file in its dir (same filesystem), then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".extmod-tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """``durable=False`` skips the fsync: for scratch files (a build dir's sources) that
    can always be made again."""
    _via_temp(path, mode, lambda f: f.write(data), durable)


def write_stream(path: Path, fill: Callable[[BinaryIO], object], mode: int = 0o644) -> None:
    """Write ``path`` from ``fill(file)`` (a tar stream, say) through a temp file."""
    _via_temp(path, mode, fill, True)


def symlink(link: Path, target: Path) -> None:
    """Make or replace ``link`` -> ``target`` in one rename."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.extmod-tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.rename(tmp, link)


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    write_bytes(path, text.encode(), mode)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def copy_file(src: Path, dest: Path, mode: int = 0o644, durable: bool = True) -> None:
    """Copy ``src`` to ``dest`` through a temp file in dest's dir, 1 MiB at a time."""
    with open(src, "rb") as inp:
        _via_temp(dest, mode, lambda out: shutil.copyfileobj(inp, out, 1 << 20), durable)


def move_file(src: Path, dest: Path) -> None:
    """Rename, or copy then unlink when ``dest`` is on another filesystem."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dest)
    except OSError as e:
        if e.errno != 18:  # EXDEV
            raise
        copy_file(src, dest, mode=src.stat().st_mode & 0o7777)
        src.unlink()


def new_dir_beside(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".extmod-tmp", dir=final.parent))


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished dir ``tmp`` at ``final``, replacing what was there."""
    tmp.chmod(0o755)
    old = final.with_name(f".{final.name}.extmod-old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists() or final.is_symlink():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def remove_dir(path: Path) -> None:
    """Remove a dir tree so that a crash never leaves half of it under its name."""
    if not path.exists():
        return
    gone = path.with_name(f".{path.name}.extmod-old")
    shutil.rmtree(gone, ignore_errors=True)
    os.rename(path, gone)
    shutil.rmtree(gone)
