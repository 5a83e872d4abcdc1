"""The line of a failed build's log a person should see first: a write the build tried in
the kernel's read-only trees, said as such; else the compiler's or linker's first error."""

from __future__ import annotations

import re
from pathlib import Path

from extmod.core import run

# First lines worth showing a person, in order of preference.
_ERROR_PATTERNS = (
    re.compile(r"^.*No space left on device.*$", re.M),
    re.compile(r"^(?P<loc>[^\s:]+:\d+(?::\d+)?): (?:fatal )?error: .*$", re.M),
    re.compile(r"^.*\bLLVM ERROR: .*$", re.M),
    re.compile(r"^.*(?:ld\.lld|ld)(?:-\d+)?: error: .*$", re.M),
    re.compile(r"^ERROR: .*$", re.M),
    re.compile(r"^.*\*\*\* .*$", re.M),
)


def first_error(log: Path, protected: tuple[Path, ...] = (), view: run.View | None = None) -> str:
    """The line of the log a person should see first. A write into the kernel's trees
    (read-only to builds) comes before everything, said as such. Paths in a ``view`` are
    said as the real paths they show."""
    text = log.read_text(encoding="utf-8", errors="replace")
    if view is not None:
        text = view.to_real(text)
    written = _readonly_write(text, protected)
    if written:
        return written
    for pattern in _ERROR_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(0).strip()
    return "make failed"


# GNU tools quote names with \u2018...\u2019 under a UTF-8 locale, '...' otherwise.
_ENTERING = re.compile("Entering directory ['`\u2018]([^'\u2019]+)['\u2019]")


_QUOTED = re.compile("['`\u2018]([^'\u2019]+)['\u2019]")


def _readonly_write(text: str, protected: tuple[Path, ...]) -> str | None:
    """The first write a build tried into the kernel's read-only trees, with the full path:
    ``mkdir: cannot create directory '.tmp_58': Read-only file system`` after make entered
    /usr/src/linux-headers-... becomes that dir's .tmp_58."""
    if not protected:
        return None
    cwd: str | None = None
    for line in text.splitlines():
        m = _ENTERING.search(line)
        if m:
            cwd = m.group(1)
        if "Read-only file system" not in line:
            continue
        q = _QUOTED.search(line)
        name = q.group(1) if q else ""
        path = Path(cwd or "/", name) if name and cwd else Path(name or "?")
        tool = line.split(":", 1)[0].strip()
        return (
            f"it tried to write in the kernel's tree, which builds may only read: "
            f"{path} ({tool}: Read-only file system)"
        )
    return None
