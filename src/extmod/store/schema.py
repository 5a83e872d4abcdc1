"""Records read back from the state tree, checked before anything uses them (issue 22).

A state file may be damaged (a full disk, a crash of another tool, a hand edit) or
hostile (someone who can write the state dir). Whatever it holds, reading it gives a
record of the right shape or a ``UserError`` (exit 3) that names the file and the field:
never an internal error, and never a path that leads out of the tree it belongs to.
Every reader of a state record goes through ``load`` and ``Fields``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from extmod.core import files
from extmod.core.errors import UserError

# A record is a few KiB; the largest (a source index of a big package) a few MiB.
MAX_BYTES = 64 << 20

_SHA256 = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+~-]*")


def _kind(value: object) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def load(path: Path) -> Any | None:
    """The JSON of a state file; None when it does not exist. A file that is a symlink,
    not a regular file (a FIFO, a device: never read), too large, not UTF-8 or not JSON is
    a ``UserError``."""
    if path.is_symlink():
        raise UserError(f"{path}: a symlink where a record belongs")
    raw = files.read_regular(path, MAX_BYTES, "record")
    if raw is None:
        return None
    return parse(raw, str(path))


def parse(raw: bytes, where: str) -> Any:
    """JSON bytes from anywhere (a file, a shared store's object header); damage of any
    kind is a ``UserError`` naming ``where``."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{where}: damaged record: not UTF-8") from None
    except ValueError as e:
        raise UserError(f"{where}: damaged record: not JSON ({e})") from None
    except RecursionError:
        raise UserError(f"{where}: damaged record: nested too deep") from None


def confined(text: str) -> bool:
    """A relative path that stays below the dir it is relative to: no leading ``/``, no
    ``..``, ``.`` or empty part, no NUL."""
    return (
        text != ""
        and "\0" not in text
        and not text.startswith("/")
        and all(part not in ("", ".", "..") for part in text.split("/"))
    )


class Fields:
    """One JSON object of a record, read field by field with its type checked."""

    def __init__(self, where: Path, data: object, prefix: str = ""):
        self.where = where
        self.prefix = prefix
        if not isinstance(data, dict):
            raise self.bad("", f"expected an object, found {_kind(data)}")
        self.data: dict[str, Any] = data

    def same(self, **want: str) -> None:
        """Text fields that must equal what the record's place says (its dir's name)."""
        for key, value in want.items():
            if (got := self.text(key)) != value:
                raise self.bad(key, f"{got[:200]!r} where this dir holds {value!r}")

    def bad(self, key: str, why: str) -> UserError:
        field = f"{self.prefix}{key}" or "the record"
        return UserError(f"{self.where}: {field}: {why}")

    def _get(self, key: str, kinds: tuple[type, ...], what: str, optional: bool) -> Any:
        if key not in self.data or (optional and self.data[key] is None):
            if optional:
                return None
            raise self.bad(key, "missing")
        value = self.data[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.bad(key, f"expected {what}, found {_kind(value)}")
        return value

    def text(self, key: str) -> str:
        value: str = self._get(key, (str,), "a string", False)
        if "\0" in value:
            raise self.bad(key, "a NUL byte")
        return value

    def opt_text(self, key: str) -> str | None:
        if self.data.get(key) is None:
            return None
        return self.text(key)

    def name(self, key: str) -> str:
        value = self.text(key)
        if not NAME.fullmatch(value):
            raise self.bad(key, f"{value!r} is not a valid name")
        return value

    def number(self, key: str) -> float | None:
        value = self._get(key, (int, float), "a number", True)
        return None if value is None else float(value)

    def boolean(self, key: str) -> bool | None:
        value: bool | None = self._get(key, (bool,), "true/false", True)
        return value

    def stamp(self, key: str) -> tuple[int, int, int] | None:
        """Three whole numbers (a file's size, mtime and ctime in ns), or nothing."""
        value = self._get(key, (list,), "a list", True)
        if value is None:
            return None
        if len(value) != 3 or not all(type(x) is int and x >= 0 for x in value):
            raise self.bad(key, "expected [size, mtime_ns, ctime_ns]")
        return (value[0], value[1], value[2])

    def sha256(self, key: str) -> str:
        value = self.text(key)
        if not _SHA256.fullmatch(value):
            raise self.bad(key, f"{value[:80]!r} is not a sha256 digest")
        return value

    def rel_path(self, key: str, optional: bool = False) -> str | None:
        """A path relative to the tree the record is about, that stays inside it."""
        value = self.opt_text(key) if optional else self.text(key)
        if value is not None and not confined(value):
            raise self.bad(key, f"{value[:200]!r} leads out of its tree: refused")
        return value

    def location(self, key: str) -> str:
        """A module's place below the kernel's module dir, as DEST_MODULE_LOCATION is
        written (``/extra``, ``/kernel/drivers/md``): absolute, and no ``..`` or ``.``."""
        value = self.text(key)
        if not value.startswith("/") or not confined(value.strip("/") or "x"):
            raise self.bad(key, f"{value[:200]!r} leads out of the kernel's module dir: refused")
        return value

    def texts(self, key: str, paths: bool = False) -> tuple[str, ...]:
        """A list of strings (missing or null: empty); ``paths``: each ``confined``."""
        items = self._get(key, (list,), "a list", True) or []
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, str) or "\0" in item:
                raise self.bad(f"{key}[{i}]", f"expected a string, found {_kind(item)}")
            if paths and not confined(item):
                raise self.bad(f"{key}[{i}]", f"{item[:200]!r} leads out of its tree: refused")
            out.append(item)
        return tuple(out)

    def objects(self, key: str, optional: bool = False) -> list[Fields]:
        items = self._get(key, (list,), "a list", optional) or []
        return [
            Fields(self.where, item, f"{self.prefix}{key}[{i}].") for i, item in enumerate(items)
        ]

    def record(self, key: str) -> Fields:
        return Fields(self.where, self._get(key, (dict,), "an object", False), f"{key}.")
