"""Install built modules into /lib/modules/KVER as one journaled transaction, keep the
in-tree modules an install replaces and put them back on uninstall; ``recover`` finishes or
rolls back what a crash interrupted. Finishing a module is ``finish``, signing keys are
``signing``, the tree's layout and depmod are ``modtree``."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from extmod.core import atomic, digest, faults
from extmod.core.config import Config
from extmod.core.errors import EnvError, UserError
from extmod.core.paths import Paths
from extmod.kernel import modtree
from extmod.store import schema
from extmod.store.state import Built, BuiltModule, Installed, InstalledFile, State


def _missing_dirs(kdir: Path, dest_dir: Path) -> list[str]:
    """The dirs an install creates under KVER, outermost first."""
    missing = []
    d = dest_dir
    while not d.exists() and d != kdir:
        missing.append(str(d.relative_to(kdir)))
        d = d.parent
    return list(reversed(missing))


def _plan_file(
    kdir: Path,
    m: BuiltModule,
    dest: Path,
    by_name: dict[str, list[Path]],
    saved_dir: Path,
    moves: list[tuple[Path, Path]],
) -> InstalledFile:
    """One module's place: an in-tree module of the same name in the very dir it goes to
    (any compression) is kept aside (``moves``) to put back on uninstall; the same name
    elsewhere in the kernel's tree is a shadow, recorded."""
    original: str | None = None
    shadows = []
    for other in sorted(by_name.get(m.dest_name.replace("-", "_"), [])):
        if other.parent == dest.parent:
            moves.append((other, saved_dir / other.relative_to(kdir)))
            original = str(other.relative_to(kdir))
        else:
            shadows.append(str(other.relative_to(kdir)))
    return InstalledFile(
        path=str(dest.relative_to(kdir)),
        sha256=m.sha256,
        original=original,
        shadows=tuple(shadows),
    )


STAGED = ".staged.extmod-tmp"  # a staged module: .NAME.ko.staged.extmod-tmp beside NAME.ko


def stage(
    state: State,
    paths: Paths,
    config: Config,
    built: Built,
    withheld: tuple[str, ...],
    replacing: str,
) -> dict[Path, Path]:
    """Copy a build's modules beside where they go (same dir, same filesystem), before
    the installed version ``replacing`` is taken out (the caller holds the kernel lock): a
    disk that is full, or a tree that cannot be written, fails here and the old version
    stays. ``install`` renames them into place. Their list is kept in the state dir first,
    so that ``recover`` removes them after a crash. Returns destination -> staged copy."""
    kdir = paths.modules_dir / built.kver
    staged = {
        dest_dir / m.file: dest_dir / f".{m.file}{STAGED}"
        for m, dest_dir in _targets(paths, config, built, withheld, kdir, {})
        if dest_dir.is_dir()  # a new dir is made, and recorded, by the install itself
    }
    listing = state.staging_file(built.kver, built.name)
    try:
        atomic.write_json(listing, [str(p.relative_to(kdir)) for p in staged.values()])
        for dest, tmp in staged.items():
            atomic.copy_file(built.dir / "module" / dest.name, tmp, mode=0o644)
            faults.point("install:staged")
    except OSError as e:
        unstage(state, paths, built.kver, built.name)
        raise EnvError(
            f"cannot install {built.name}/{built.version} into {kdir}: {e.strerror} "
            f"(nothing changed: {built.name}/{replacing} stays installed)"
        ) from None
    return staged


def unstage(state: State, paths: Paths, kver: str, name: str) -> None:
    """Remove what ``stage`` left of ``name`` (listed, confined, named as staged)."""
    kdir = paths.modules_dir / kver
    listing = state.staging_file(kver, name)
    try:
        listed = schema.load(listing)
    except (OSError, ValueError, UserError):
        listed = []
    for rel in listed if isinstance(listed, list) else []:
        if isinstance(rel, str) and schema.confined(rel) and rel.endswith(STAGED):
            path = kdir / rel
            if _inside(kdir, path):
                path.unlink(missing_ok=True)
    state.clear_journal(listing)


def _put(src: Path, staged: dict[Path, Path], dest: Path) -> None:
    """One module into place: its staged copy renamed, else a copy (temp + rename)."""
    tmp = staged.get(dest)
    if tmp is not None and tmp.is_file():
        atomic.move_file(tmp, dest)
    else:
        atomic.copy_file(src, dest, mode=0o644)


def install(
    state: State,
    paths: Paths,
    config: Config,
    built: Built,
    withheld: tuple[str, ...] = (),
    staged: dict[Path, Path] | None = None,
) -> Installed:
    """Copy a build's modules into /lib/modules/KVER as one journaled transaction: the
    plan is written first, then originals are moved away and each .ko is put in place
    (temp + rename), then the record; a crash anywhere is rolled back by ``recover``.
    The caller holds the kernel lock and runs depmod. ``withheld``: load-check problems
    ("x.ko: ..."); the modules they name are left out and the record says why."""
    kdir = paths.modules_dir / built.kver
    if not kdir.is_dir():
        raise UserError(
            f"{kdir} does not exist: cannot install into a kernel that is not installed"
        )
    owned = {
        kdir / f.path: rec.name
        for rec in state.all_installed(built.kver)
        for f in rec.files
        if rec.name != built.name
    }
    targets = _targets(paths, config, built, withheld, kdir, owned)
    by_name = modtree.modules_by_name(kdir, set(owned))
    files: list[InstalledFile] = []
    created: list[str] = []
    moves: list[tuple[Path, Path]] = []  # in-tree module -> where it is kept
    saved_dir = state.originals_dir(built.kver, built.arch, built.name)
    for m, dest_dir in targets:
        created += _missing_dirs(kdir, dest_dir)
        files.append(_plan_file(kdir, m, dest_dir / m.file, by_name, saved_dir, moves))
    rec = Installed(
        built.name,
        built.version,
        built.kver,
        built.arch,
        tuple(files),
        tuple(dict.fromkeys(created)),
        withheld,
    )
    moved = [(str(a.relative_to(kdir)), str(b.relative_to(saved_dir))) for a, b in moves]
    journal = _write_plan(state, rec, moved)
    try:
        rec = _apply(state, kdir, built, rec, moves, targets, staged or {})
    except OSError as e:
        _roll_back_install(state, paths, rec, moved)
        state.clear_journal(journal)
        raise EnvError(
            f"cannot install {built.name} into {kdir}: {e.strerror} (rolled back: nothing changed)"
        ) from None
    faults.point("install:recorded")
    state.clear_journal(journal)
    unstage(state, paths, built.kver, built.name)
    return rec


def _apply(
    state: State,
    kdir: Path,
    built: Built,
    rec: Installed,
    moves: list[tuple[Path, Path]],
    targets: list[tuple[BuiltModule, Path]],
    staged: dict[Path, Path],
) -> Installed:
    """The journaled steps: originals aside, each module in place, the record."""
    for other, saved in moves:
        if not saved.exists():
            atomic.move_file(other, saved)
        else:
            other.unlink()
        faults.point("install:original")
    for m, dest_dir in targets:
        _put(built.dir / "module" / m.file, staged, dest_dir / m.file)
        faults.point("install:file")
    rec = _stamped(kdir, rec)
    state.write_installed(rec)
    return rec


def _stamped(kdir: Path, rec: Installed) -> Installed:
    """The record with each file's size, mtime and ctime once in place (status's quick
    check)."""
    files = []
    for f in rec.files:
        st = (kdir / f.path).stat()
        files.append(dataclasses.replace(f, stamp=(st.st_size, st.st_mtime_ns, st.st_ctime_ns)))
    return dataclasses.replace(rec, files=tuple(files))


def _targets(
    paths: Paths,
    config: Config,
    built: Built,
    withheld: tuple[str, ...],
    kdir: Path,
    owned: dict[Path, str],
) -> list[tuple[BuiltModule, Path]]:
    """Each module to install and its dir; a file another package installed is refused."""
    targets = []
    for m in built.modules:
        if any(w.startswith(f"{m.built_name}.ko: ") for w in withheld):
            continue
        dest_dir = modtree.confined(kdir, modtree.dest_location(config, paths, m.dest_location))
        if dest_dir / m.file in owned:
            raise UserError(
                f"{built.name}: {dest_dir / m.file} is installed by package "
                f"{owned[dest_dir / m.file]}"
            )
        targets.append((m, dest_dir))
    return targets


def _write_plan(state: State, rec: Installed, moved: list[tuple[str, str]]) -> Path:
    """The journal (the record and the originals to move) and the depmod marker, before
    anything in the module tree changes."""
    journal = state.journal_file(rec.kver, rec.arch, rec.name)
    try:
        atomic.write_json(
            journal, {"op": "install", "record": rec.to_json(), "moves": [list(m) for m in moved]}
        )
        atomic.write_text(state.depmod_marker(rec.kver), "")
    except OSError as e:
        raise EnvError(f"cannot write the journal {journal}: {e.strerror}") from None
    faults.point("install:journaled")
    return journal


def uninstall(state: State, paths: Paths, rec: Installed) -> list[str]:
    """Remove an install's files (only if unchanged), put originals back, drop the record:
    journaled, and finished by ``recover`` after a crash. Returns notes for files that
    were left because someone changed them."""
    journal = state.journal_file(rec.kver, rec.arch, rec.name)
    try:
        atomic.write_json(journal, {"op": "uninstall", "record": rec.to_json()})
        atomic.write_text(state.depmod_marker(rec.kver), "")
    except OSError as e:
        raise EnvError(f"cannot write the journal {journal}: {e.strerror}") from None
    faults.point("uninstall:journaled")
    notes = _finish_uninstall(state, paths, rec)
    state.clear_journal(journal)
    return notes


def _finish_uninstall(state: State, paths: Paths, rec: Installed) -> list[str]:
    """Every step may already have been done (a re-run after a crash)."""
    kdir = paths.modules_dir / rec.kver
    notes = []
    originals = state.originals_dir(rec.kver, rec.arch, rec.name)
    for f in rec.files:
        path = kdir / f.path
        if not _inside(kdir, path):
            notes.append(f"{path}: its dir leads out of {kdir}: left in place")
            continue
        if path.exists():
            if digest.file(path) == f.sha256:
                path.unlink()
                faults.point("uninstall:file")
            else:
                notes.append(f"{path} was changed since it was installed: left in place")
        if f.original and _inside(kdir, kdir / f.original):
            saved = originals / f.original
            if saved.exists() and not (kdir / f.original).exists():
                atomic.move_file(saved, kdir / f.original)
    _remove_empty(kdir, rec.created_dirs)
    if originals.exists():
        shutil.rmtree(originals)
        for parent in (originals.parent, originals.parent.parent):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
    state.drop_installed(rec.kver, rec.arch, rec.name)
    faults.point("uninstall:recorded")
    return notes


def _roll_back_install(
    state: State, paths: Paths, rec: Installed, moves: list[tuple[str, str]]
) -> None:
    """Undo a part-done install: its files (and temp files) out, originals back."""
    kdir = paths.modules_dir / rec.kver
    saved_dir = state.originals_dir(rec.kver, rec.arch, rec.name)
    for f in rec.files:
        path = kdir / f.path
        if not _inside(kdir, path):
            continue
        for tmp in path.parent.glob(f".{path.name}.*.extmod-tmp"):
            tmp.unlink(missing_ok=True)
        if path.exists() and digest.file(path) == f.sha256:
            path.unlink()
    for orig, saved in moves:
        if not _inside(kdir, kdir / orig):
            continue
        if (saved_dir / saved).exists() and not (kdir / orig).exists():
            atomic.move_file(saved_dir / saved, kdir / orig)
    _remove_empty(kdir, rec.created_dirs)
    unstage(state, paths, rec.kver, rec.name)
    current = state.find_installed(rec.kver, rec.arch, rec.name)
    if current is not None and current.files == rec.files:
        state.drop_installed(rec.kver, rec.arch, rec.name)


def _inside(kdir: Path, path: Path) -> bool:
    """``path``'s dir, symlinks resolved, is ``kdir`` or below it: a record's paths are
    confined when read (schema), and a symlinked dir made since must not lead a removal
    elsewhere either."""
    return path.parent.resolve().is_relative_to(kdir.resolve())


def _remove_empty(kdir: Path, created: tuple[str, ...]) -> None:
    for rel in reversed(created):
        d = kdir / rel
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _moves(j: schema.Fields) -> list[tuple[str, str]]:
    """A journal's originals moved away: (path under /lib/modules/KVER, path under the
    originals dir), both confined."""
    pairs = []
    for i, pair in enumerate(j.data.get("moves") or []):
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(p, str) and schema.confined(p) for p in pair)
        ):
            raise j.bad(f"moves[{i}]", "expected two paths inside their trees")
        pairs.append((pair[0], pair[1]))
    return pairs


def recover(state: State, paths: Paths, kver: str) -> list[str]:
    """Finish what a crash interrupted on one kernel (the caller holds its lock): an
    install is rolled back, an uninstall completed. Returns what was done."""
    done = []
    for _, journal in state.journals(kver):
        # Written by temp + rename, so never half a journal; a damaged or hand-edited one is
        # reported (file and field), not guessed at.
        j = schema.Fields(journal, schema.load(journal))
        rec = Installed.from_json(j.record("record").data, journal)
        op = j.text("op")
        if op not in ("install", "uninstall"):
            raise j.bad("op", f"{op[:80]!r}: expected install or uninstall")
        if op == "install":
            _roll_back_install(state, paths, rec, _moves(j))
            done.append(
                f"rolled back the interrupted install of {rec.name}/{rec.version} on {kver}"
            )
        else:
            _finish_uninstall(state, paths, rec)
            done.append(f"finished the interrupted uninstall of {rec.name}/{rec.version} on {kver}")
        state.clear_journal(journal)
    # staged modules of an upgrade a crash stopped before its journal: the old version is
    # still installed (the caller holds the kernel lock: no one is staging now)
    for listing in sorted(state.staging_file(kver, "-").parent.glob("*.staged")):
        name = listing.name.removesuffix(".staged")
        unstage(state, paths, kver, name)
        done.append(f"removed the staged modules of an interrupted install of {name} on {kver}")
    return done
