"""What ``status`` shows: one row per (package, version, kernel, arch), from the state
tree alone (registrations, build records, install records, interrupted journals and the
records ``extmod verify`` leaves)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extmod.core import digest, files
from extmod.store import schema
from extmod.store.state import Added, Installed, State, by_module, parse_spec

PREBUILT_DIR = "usr/share/extmod/prebuilt"  # where an exported package keeps its record


def prebuilt(root: Path) -> list[dict[str, Any]]:
    """The records of the packages ``extmod export`` made that are installed under
    ``root``, with all their files there (a package removed takes its record along)."""
    found: list[dict[str, Any]] = []
    for f in sorted((root / PREBUILT_DIR).glob("*.json")):
        rec = files.read_cache(f)
        if not isinstance(rec, dict):
            continue
        try:
            base = root / "lib/modules" / str(rec["kernel"])
            if all((base / str(x["path"])).is_file() for x in rec["files"]):
                found.append(rec)
        except (OSError, KeyError, TypeError, AttributeError):
            continue
    return found


def verification_file(state: State, kver: str, arch: str, name: str) -> Path:
    """The record ``extmod verify`` leaves for one (package, kernel)."""
    return state.verify_dir(kver) / arch / f"{name}.json"


def verified(state: State, rec: Installed) -> str:
    """ "verified WHEN (ACCEL, S s)" or "verify failed WHEN: why" for the install as it is
    now; "" when there is no record, or it is of other files (installed since)."""
    data = files.read_cache(verification_file(state, rec.kver, rec.arch, rec.name))
    if not isinstance(data, dict) or data.get("version") != rec.version:
        return ""
    if data.get("files") != sorted(f.sha256 for f in rec.files):
        return ""
    how = f"({data.get('accel')}, {data.get('seconds')} s)"
    if data.get("ok"):
        return f"verified {data.get('verified')} {how}"
    rows = data.get("rows")
    bad = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    why = "; ".join(
        f"{r.get('module')}: {r.get('result')}" for r in bad if r.get("result") != "loaded"
    )
    why = why or "see extmod verify"
    return f"verify failed {data.get('verified')} {how}: {why}"


def drift(state: State, rec: Installed) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(changed, missing): the record's files whose content is no longer what the install
    put there, and those that are gone (paths under /lib/modules/KVER). A file whose size,
    mtime and ctime are as recorded is taken as unchanged (a write changes ctime, and no
    user can set it back); only the others are hashed, so status stays fast (issue 22; dkms
    status diffs each module)."""
    kdir = state.paths.modules_dir / rec.kver
    changed, missing = [], []
    for f in rec.files:
        path = kdir / f.path
        try:
            st = path.stat()
        except FileNotFoundError:
            missing.append(f.path)
            continue
        if f.stamp == (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            continue
        try:
            same = digest.file(path) == f.sha256
        except OSError:
            same = False
        if not same:
            changed.append(f.path)
    return tuple(changed), tuple(missing)


@dataclass(frozen=True)
class StatusRow:
    name: str
    version: str
    kver: str
    arch: str
    state: str  # added, built, installed
    original_saved: bool
    shadows: tuple[str, ...]
    interrupted: str = ""  # "install" or "uninstall" left in the journal by a crash
    withheld: tuple[str, ...] = ()  # load-check problems of modules not installed
    verification: str = ""  # verified(): the last extmod verify of this install
    from_package: str = ""  # installed by a package extmod export made, not by extmod
    changed: tuple[str, ...] = ()  # drift(): installed files changed since
    missing: tuple[str, ...] = ()  # drift(): installed files deleted since
    orphan: bool = False  # installed, but the package is not added (orphans())
    from_store: str = ""  # the build was taken from the build store (its digest)

    def line(self) -> str:
        if not self.kver:
            return f"{self.name}/{self.version}: added"
        extra = " (original module saved)" if self.original_saved else ""
        if self.changed:
            extra += f" (changed since installed: {', '.join(self.changed)})"
        if self.missing:
            extra += f" (deleted since installed: {', '.join(self.missing)})"
        for module, why in by_module(self.withheld).items():
            extra += f" (withheld {module}: {'; '.join(why)})"
        if self.orphan:
            extra += (
                f" (not added any more: extmod uninstall {self.name}/{self.version} "
                f"-k {self.kver} removes it)"
            )
        if self.interrupted == "install":
            extra += " (an install was interrupted: the next extmod command rolls it back)"
        elif self.interrupted:
            extra += " (an uninstall was interrupted: the next extmod command finishes it)"
        if self.verification:
            extra = f", {self.verification}{extra}"
        if self.from_package:
            extra = f" from package {self.from_package}{extra}"
        return f"{self.name}/{self.version}, {self.kver}, {self.arch}: {self.state}{extra}"


def _pending(state: State, kver: str | None) -> dict[tuple[str, str, str, str], str]:
    """(name, version, kver, arch) -> "install"/"uninstall": the interrupted operations.
    A damaged journal is named (the next lifecycle verb refuses on it too)."""
    pending = {}
    for k, journal in state.journals(kver):
        j = schema.Fields(journal, schema.load(journal))
        rec = Installed.from_json(j.record("record").data, journal)
        pending[(rec.name, rec.version, k, rec.arch)] = j.text("op")
    return pending


def rows(state: State, spec: str | None, kver: str | None) -> list[StatusRow]:
    name, version = parse_spec(spec) if spec else (None, None)
    installs = {(r.name, r.version, r.kver, r.arch): r for r in state.all_installed(kver)}
    pending = _pending(state, kver)
    rows: list[StatusRow] = []
    for a in state.all_added():
        if (name and a.name != name) or (version and a.version != version):
            continue
        built = {
            (b.kver, b.arch): b
            for b in state.builds(a.name, a.version)
            if kver is None or b.kver == kver
        }
        kernels = set(built)
        kernels |= {(k, ar) for (n, v, k, ar) in installs if (n, v) == (a.name, a.version)}
        for k, ar in sorted(kernels):
            rec = installs.get((a.name, a.version, k, ar))
            op = pending.get((a.name, a.version, k, ar), "")
            b = built.get((k, ar))
            stored = (b.record.from_store or "") if b is not None else ""
            if rec is None:
                rows.append(
                    StatusRow(a.name, a.version, k, ar, "built", False, (), op, from_store=stored)
                )
            else:
                rows.append(
                    StatusRow(
                        a.name,
                        a.version,
                        k,
                        ar,
                        "installed",
                        any(f.original for f in rec.files),
                        tuple(x for f in rec.files for x in f.shadows),
                        op,
                        rec.withheld,
                        verified(state, rec),
                        "",
                        *drift(state, rec),
                        from_store=stored,
                    )
                )
        if not kernels and kver is None:
            rows.append(StatusRow(a.name, a.version, "", "", "added", False, ()))
    rows += [
        StatusRow(r.name, r.version, r.kver, r.arch, "installed", False, (), orphan=True)
        for r in orphans(state, kver)
        if (not name or r.name == name) and (not version or r.version == version)
    ]
    return _with_prebuilt(rows, state, name, version, kver)


def orphans(state: State, kver: str | None = None) -> list[Installed]:
    """Install records whose package is not added any more: its registration was deleted
    or damaged by hand. The module is still in place; ``uninstall NAME`` removes it."""
    added = {(a.name, a.version) for a in state.all_added()}
    return [r for r in state.all_installed(kver) if (r.name, r.version) not in added]


def _with_prebuilt(
    rows: list[StatusRow], state: State, name: str | None, version: str | None, kver: str | None
) -> list[StatusRow]:
    """The rows of exported packages installed here, instead of a bare "added" row."""
    extra = [
        StatusRow(
            str(r["name"]),
            str(r["version"]),
            str(r["kernel"]),
            str(r["arch"]),
            "installed",
            False,
            (),
            from_package=str(r["package"]),
        )
        for r in prebuilt(state.paths.root)
        if (not name or r["name"] == name)
        and (not version or r["version"] == version)
        and (not kver or r["kernel"] == kver)
    ]
    named = {(r.name, r.version) for r in extra}
    kept = [r for r in rows if r.kver or (r.name, r.version) not in named]
    return sorted(kept + extra, key=lambda r: (r.name, r.version, r.kver))


@dataclass(frozen=True)
class DkmsRow:
    """One (build, kernel, arch) of a package as ``dkms status`` shows it (dkms 3.2.2
    do_status and module_status_built_extra): what DKMS would find in its tree."""

    name: str
    version: str
    kver: str
    arch: str
    installed: bool
    original_saved: bool  # a module of the kernel's own was put aside for it
    built_missing: bool  # a built module is gone from the build
    differing: int  # installed modules changed or deleted since they were installed


def dkms_rows(state: State, a: Added, kver: str, arch: str) -> list[DkmsRow]:
    """A package's builds for ``kver`` and ``arch`` ("": any), in DKMS's order (bytes);
    none: DKMS says "added"."""
    rows = []
    builds = sorted(
        state.builds(a.name, a.version), key=lambda b: (b.kver.encode(), b.arch.encode())
    )
    for b in builds:
        if (kver and b.kver != kver) or (arch and b.arch != arch) or not re.match(r"\d", b.kver):
            continue
        rec = state.find_installed(b.kver, b.arch, a.name)
        installed = rec is not None and rec.version == a.version
        changed, missing = drift(state, rec) if installed and rec is not None else ((), ())
        rows.append(
            DkmsRow(
                a.name,
                a.version,
                b.kver,
                b.arch,
                installed,
                installed and rec is not None and any(f.original for f in rec.files),
                not all((b.dir / "module" / m.file).is_file() for m in b.modules),
                len(changed) + len(missing),
            )
        )
    return rows
