"""Builds that failed, remembered beside their kept build dir
(``STATE/build/NAME/VERSION/KVER/.extmod/failed.json``): the inputs digest of the failed
build and its first error. The kernel hooks do not try the very same build again (it would
fail again: lttng-modules recompiling on every boot); ``doctor`` names each. Read and
written only here; a record that does not read is forgotten (it only saves a build)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from extmod.core import atomic, files
from extmod.core.paths import Paths


@dataclass(frozen=True)
class Failure:
    name: str
    version: str
    kver: str
    inputs: str  # the inputs digest of the build that failed
    error: str  # its first error, as said
    status: int = 0  # a MAKE that failed: its exit status (0: another step failed)
    make: str = ""  # and its make line, as dkms.conf gives it
    log: str = ""  # and the log it wrote


def _file(paths: Paths, name: str, version: str, kver: str) -> Path:
    return paths.work_dir(name, version, kver) / ".extmod" / "failed.json"


def remember(paths: Paths, f: Failure) -> None:
    """Keep ``f``; a disk that takes nothing costs only the next build's time."""
    try:
        fields: dict[str, str | int] = {"inputs": f.inputs, "error": f.error}
        if f.status:
            fields |= {"status": f.status, "make": f.make, "log": f.log}
        atomic.write_json(_file(paths, f.name, f.version, f.kver), fields)
    except OSError:
        pass


def forget(paths: Paths, name: str, version: str, kver: str) -> None:
    _file(paths, name, version, kver).unlink(missing_ok=True)


def find(paths: Paths, name: str, version: str, kver: str) -> Failure | None:
    return _read(_file(paths, name, version, kver), name, version, kver)


def every(paths: Paths) -> list[Failure]:
    """Every remembered failure, by package, version and kernel."""
    root = paths.builds_root
    found = []
    for marker in sorted(root.glob("*/*/*/.extmod/failed.json")) if root.is_dir() else []:
        kdir = marker.parent.parent
        f = _read(marker, kdir.parent.parent.name, kdir.parent.name, kdir.name)
        if f is not None:
            found.append(f)
    return found


def _read(marker: Path, name: str, version: str, kver: str) -> Failure | None:
    data = files.read_cache(marker)
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), str):
        return None
    error = str(data.get("error") or "build failed")
    status = data.get("status")
    if not isinstance(status, int) or not status or not isinstance(data.get("make"), str):
        return Failure(name, version, kver, data["inputs"], error)
    return Failure(
        name, version, kver, data["inputs"], error, status, data["make"], str(data.get("log"))
    )
