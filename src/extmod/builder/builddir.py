"""The kept build dir of one (package, kernel): made, wiped when what its objects were built
against changed, synced from the source by content (so make skips unchanged objects), its
modules copied out for an ad hoc build, handed to the build user, cleaned. Never the source
dir, never the kernel tree."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

from extmod.core import atomic, digest, files, hints, run
from extmod.core.errors import EnvError
from extmod.core.paths import Paths
from extmod.kernel import toolchain
from extmod.kernel.kernel import Kernel
from extmod.source import package
from extmod.store import schema


def prepare(
    bdir: Path,
    tree: Path,
    meta: Path,
    kernel: Kernel,
    resolved: toolchain.Resolved,
    extra: dict[str, object] | None = None,
    fresh: bool = False,
) -> None:
    """Create the build dir; wipe it if what its objects were built against has changed
    (or always, when ``fresh``: patches and PRE_BUILD scripts change the sources)."""
    stamp = json.dumps(
        {
            "kernel": kernel.identity(),
            "tree": str(kernel.build_dir),
            "compiler": resolved.version_line,
            "make": list(resolved.make_vars),
            **(extra or {}),
        },
        sort_keys=True,
    )
    stamp_file = meta / "inputs.json"
    try:
        if (fresh or (stamp_file.exists() and stamp_file.read_text() != stamp)) and tree.exists():
            shutil.rmtree(tree)
            (meta / "manifest.json").unlink(missing_ok=True)
        tree.mkdir(parents=True, exist_ok=True)
        meta.mkdir(exist_ok=True)
        atomic.write_text(stamp_file, stamp)
    except OSError as e:
        raise EnvError(f"cannot write build dir {bdir}: {e.strerror}") from None


def sync(src: Path, tree: Path, manifest_file: Path) -> None:
    """Make ``tree`` hold ``src``'s files. Unchanged files keep their mtime, so make skips
    their objects; changed ones get a fresh mtime, so make rebuilds them even if the source
    mtime is old. Files gone from src since the last sync are removed; build outputs stay."""
    kept = files.read_cache(manifest_file)
    old: dict[str, str] = kept if isinstance(kept, dict) else {}
    new: dict[str, str] = {}
    for rel, f, link in files.tree_entries(src):
        dest = tree / rel
        if link is not None:  # out of the tree: kept as a link (DKMS's cp -a), never read
            new[rel] = f"link:{link}"
            if not (dest.is_symlink() and os.readlink(dest) == link):
                _make_parent(tree, dest)
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                dest.unlink(missing_ok=True)
                dest.symlink_to(link)
            continue
        # by streams: a package may hold a 60 MB blob (nvidia's nv-kernel.o_binary)
        new[rel] = sha = digest.file(f)
        if old.get(rel) == sha and dest.is_file() and not dest.is_symlink():
            continue
        _make_parent(tree, dest)
        if dest.is_symlink():
            dest.unlink()
        atomic.copy_file(f, dest, mode=f.stat().st_mode & 0o777, durable=False)
    for rel in old.keys() - new.keys():
        _drop_stale(tree, rel)
    atomic.write_text(manifest_file, json.dumps(new, sort_keys=True))


def _make_parent(tree: Path, dest: Path) -> None:
    """``dest``'s dir in ``tree``, made if missing. A link a past sync left where the source
    now has a dir (a link out of the tree, once) is removed first: a write never goes
    through it."""
    if dest.parent.exists() and not dest.parent.resolve().is_relative_to(tree.resolve()):
        cur = tree
        for part in dest.relative_to(tree).parts[:-1]:
            cur = cur / part
            if cur.is_symlink():
                cur.unlink()
                break
    dest.parent.mkdir(parents=True, exist_ok=True)


def _drop_stale(tree: Path, rel: str) -> None:
    """Remove a file a past sync put in ``tree`` and the source no longer has. The name
    comes from a kept manifest, which may be damaged or hand-edited: only a file that stays
    in the tree (no ``..``, no absolute path, no symlinked dir on the way out) is removed."""
    if not schema.confined(rel):
        return
    dest = tree / rel
    try:
        if dest.parent.resolve().is_relative_to(tree.resolve()) and (
            dest.is_symlink() or not dest.is_dir()
        ):
            dest.unlink(missing_ok=True)
    except (OSError, ValueError):
        pass


def publish(built: list[Path], tree: Path, out: Path) -> tuple[Path, ...]:
    """Copy the .ko files into ``out``, replacing it whole: a temp dir beside it, renamed."""
    try:
        tmp = atomic.new_dir_beside(out)
        names = []
        for ko in built:
            dest = tmp / ko.relative_to(tree)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ko, dest)
            names.append(ko.relative_to(tree))
        atomic.replace_dir(tmp, out)
    except OSError as e:
        raise EnvError(f"cannot write output dir {out}: {e.strerror}") from None
    return tuple(out / n for n in names)


def clean(paths: Paths, package: str | None, kver: str | None) -> list[Path]:
    """Remove kept build dirs of a package and/or kernel (both None: all)."""
    root = paths.builds_root
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for pdir in sorted(root.iterdir()):
        if package is not None and pdir.name != package:
            continue
        for vdir in sorted(pdir.iterdir()):
            for kdir in sorted(vdir.iterdir()):
                if kver is None or kdir.name == kver:
                    shutil.rmtree(kdir)
                    removed.append(kdir)
            if not any(vdir.iterdir()):
                vdir.rmdir()
        if not any(pdir.iterdir()):
            pdir.rmdir()
    return removed


def dkms_base_dir(base: Path, tree: Path, pkg: package.Package, kernel: Kernel, log: Path) -> None:
    """What dkms 3.0.10's actual_build has made by the time POST_BUILD runs:
    ``$dkms_tree/NAME/VERSION/KVER/ARCH/log/`` (make.log, the kernel's .config) and
    ``module/`` (the built modules by their DEST_MODULE_NAME). zfs's dkms.postbuild copies
    zfs_config.h and Module.symvers there, and fails if the dir is missing."""
    shutil.rmtree(base, ignore_errors=True)
    (base / "log").mkdir(parents=True)
    (base / "module").mkdir()
    shutil.copyfile(log, base / "log" / "make.log")
    if (kernel.build_dir / ".config").is_file():
        shutil.copyfile(kernel.build_dir / ".config", base / "log" / ".config")
    for m in pkg.modules:
        shutil.copyfile(
            tree / f"{m.built_location}{m.built_name}.ko", base / "module" / f"{m.dest_name}.ko"
        )


def hand_over(top: Path, user: run.RunAs) -> None:
    """chown a dir tree that root just made to the build user (links themselves only)."""
    for dirpath, dirnames, filenames in os.walk(top):
        for n in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, n), user.uid, user.gid, follow_symlinks=False)
    os.chown(top, user.uid, user.gid)


def write_make_shim(path: Path, toolchain_args: list[str], jobs: int) -> None:
    """A ``make`` first on PATH that hands the kernel's toolchain to every make a dkms.conf
    runs (DKMS 3.0.10 appends CC=clang LD=ld.lld to the end of the whole MAKE string, so in
    ``make a && make b`` only the last make gets them). Command-line variables reach
    sub-makes through MAKEFLAGS; -j is added only outside a jobserver."""
    real = shutil.which("make", path=run.scrubbed_env()["PATH"])
    if real is None:
        raise EnvError(f"make not found: {hints.install('make')}")
    text = (
        "#!/bin/sh\n# extmod: the kernel's toolchain for every make of this build\n"
        f'case " $MAKEFLAGS " in *jobserver*) ;; *) set -- -j{jobs} "$@" ;; esac\n'
        f'exec {shlex.quote(real)} "$@" {shlex.join(toolchain_args)}\n'
    )
    atomic.write_text(path, text, mode=0o755)
