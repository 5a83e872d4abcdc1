"""A private apt configuration that reaches the whole Debian 12 archive: main, contrib,
non-free and non-free-firmware, of bookworm, bookworm-updates, bookworm-security and
bookworm-backports, from the mirror this machine's own apt sources name.

The machine's sources are only read, never changed: the private sources list, package lists
and apt cache live under ``CACHE/apt`` and are passed to apt with ``-o`` options. The mirror
is taken from the machine's configuration at run time and written nowhere in the repository.
Lists are fetched again when they are older than a day. Stdlib only.

The same for Debian 13 (``SUITE_13``, trixie with trixie-updates, trixie-security and
trixie-backports): the host's bookworm entries name the mirror, the Debian 13 suites are
taken from the same archives, and bookworm's keyring already holds trixie's keys. Its lists
live under ``CACHE/apt-trixie``.

Used by testtrees.py (Debian's 6.12 headers and images from backports, zfs-dkms from
contrib) and the benchmark. ``python3 scripts/aptarchive.py ARGS...`` runs ``apt-get ARGS``
with the private configuration.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("EXTMOD_TEST_CACHE", "/var/cache/extmod-tests"))
SUITE = "bookworm"
SUITE_13 = "trixie"
SUITE_SID = "sid"  # unstable: one suite, no -updates, -security or -backports
COMPONENTS = "main contrib non-free non-free-firmware"
MAX_AGE = 86400


def _host_entries() -> list[tuple[str, str, str]]:
    """(uri, suite, signed-by) of every Debian bookworm entry this machine's apt reads."""
    entries: list[tuple[str, str, str]] = []
    one_line = [
        Path("/etc/apt/sources.list"),
        *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
    ]
    for f in one_line:
        try:
            text = f.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            m = re.match(r"\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                signed = re.search(r"signed-by=(\S+)", m.group(1) or "")
                entries.append((m.group(2), m.group(3), signed.group(1) if signed else ""))
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        try:
            text = f.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if "deb" not in fields.get("Types", "").split() or fields.get("Enabled", "yes") == "no":
                continue
            for uri in fields.get("URIs", "").split():
                for suite in fields.get("Suites", "").split():
                    entries.append((uri, suite, fields.get("Signed-By", "").strip()))
    return [e for e in entries if e[1].split("-")[0] == SUITE]


def sources_text(release: str = SUITE) -> str:
    """The private sources list of ``release`` (bookworm, trixie or sid): each archive the
    host uses, with every component; the main archive also with RELEASE-backports (sid:
    the main archive alone)."""
    lines: list[str] = []
    for uri, host_suite, signed in _host_entries():
        opts = f"[signed-by={signed}] " if signed else ""
        suite = release + host_suite.removeprefix(SUITE)
        suites = [suite]
        if release == SUITE_SID:
            suites = [release] if host_suite == SUITE else []
        elif suite == release:
            suites.append(f"{release}-backports")
        for s in suites:
            line = f"deb {opts}{uri} {s} {COMPONENTS}"
            if line not in lines:
                lines.append(line)
    if not lines:
        raise SystemExit("aptarchive: no Debian bookworm entry in this machine's apt sources")
    return "\n".join(lines) + "\n"


def _base(release: str) -> Path:
    return CACHE / "apt" if release == SUITE else CACHE / f"apt-{release}"


def options(release: str = SUITE) -> list[str]:
    base = _base(release)
    return [
        "-o",
        f"Dir::Etc::SourceList={base / 'sources.list'}",
        "-o",
        "Dir::Etc::SourceParts=/nonexistent",
        "-o",
        f"Dir::State::Lists={base / 'lists'}",
        "-o",
        f"Dir::Cache={base / 'cache'}",
        "-o",
        "APT::Get::List-Cleanup=0",
    ]


def ready(release: str = SUITE) -> list[str]:
    """Write the sources list of ``release``, fetch the lists if missing, changed or a day
    old; the apt options to use."""
    base = _base(release)
    (base / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (base / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    text = sources_text(release)
    sources = base / "sources.list"
    stamp = base / "updated"
    stale = (
        not stamp.exists()
        or time.time() - stamp.stat().st_mtime > MAX_AGE
        or not sources.exists()
        or sources.read_text() != text
    )
    if stale:
        sources.write_text(text)
        print(f"aptarchive: apt-get update ({release}: contrib, non-free, backports)", flush=True)
        subprocess.run(
            ["apt-get", *options(release), "update", "-q"], check=True, stdout=subprocess.DEVNULL
        )
        stamp.write_text("")
    return options(release)


if __name__ == "__main__":
    # python3 aptarchive.py [--trixie] APT-GET-ARGS...
    rel = SUITE_13 if sys.argv[1:2] == ["--trixie"] else SUITE
    args = sys.argv[2:] if rel == SUITE_13 else sys.argv[1:]
    sys.exit(subprocess.run(["apt-get", *ready(rel), *args]).returncode)
