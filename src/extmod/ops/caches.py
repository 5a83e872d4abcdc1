"""What extmod keeps to be quick, shown and bounded: the ThinLTO cache namespaces and the
kept build dirs (``STATE/build/NAME/VERSION/KVER``: a package's last build for a kernel,
for incremental rebuilds). ``extmod cache show`` lists both, ``cache prune`` applies both
policies; kept build dirs are also pruned after every command that built (issue 22: a
chroot's build dirs reached 325 MiB and were never bounded)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from extmod.core.config import Config
from extmod.core.paths import Paths
from extmod.kernel import kernel, thinlto
from extmod.store import builds
from extmod.store.state import State, try_lock


@dataclass(frozen=True)
class KeptBuild:
    package: str
    version: str  # "_adhoc" for a bare kbuild dir
    kver: str
    path: Path
    files: int
    size: int
    last_used: float  # the newest mtime in it: a build that compiled wrote there


def kept_builds(paths: Paths) -> list[KeptBuild]:
    root = paths.builds_root
    found = []
    for d in sorted(root.glob("*/*/*")) if root.is_dir() else []:
        if not d.is_dir() or d.is_symlink():
            continue
        files = size = 0
        used = d.stat().st_mtime
        for dirpath, _dirs, names in os.walk(d):
            for n in names:
                try:
                    st = os.lstat(os.path.join(dirpath, n))
                except OSError:
                    continue
                files, size, used = files + 1, size + st.st_size, max(used, st.st_mtime)
        found.append(KeptBuild(d.parent.parent.name, d.parent.name, d.name, d, files, size, used))
    return found


@dataclass(frozen=True)
class Pruned:
    files: int
    size: int
    build_dirs: int


def prune_kept(config: Config, paths: Paths, now: float | None = None) -> Pruned:
    """Kept build dirs over age, then the least recently used beyond the size bound; a dir
    whose pair is being built (its lock held) is left alone."""
    now = time.time() if now is None else now
    state = State(paths)
    builds = sorted(kept_builds(paths), key=lambda b: b.last_used)
    total = sum(b.size for b in builds)
    removed = Pruned(0, 0, 0)
    for b in builds:
        too_old = config.build_keep_max_age and now - b.last_used > config.build_keep_max_age
        too_big = config.build_keep_max_size and total > config.build_keep_max_size
        if not (too_old or too_big):
            continue
        with try_lock(state, f"pair/{b.kver}/{b.package}") as held:
            if not held:
                continue
            shutil.rmtree(b.path, ignore_errors=True)
        for parent in (b.path.parent, b.path.parent.parent):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        total -= b.size
        removed = Pruned(removed.files + b.files, removed.size + b.size, removed.build_dirs + 1)
    return removed


def thinlto_bases(config: Config, paths: Paths) -> list[Path]:
    kernels = kernel.usable(paths)
    return thinlto.all_bases(config, kernels, paths)


def prune_store(config: Config, paths: Paths) -> Pruned:
    """The build store's bounds (store.max_size, store.max_age)."""
    if not config.store_max_size:  # no store: whatever an earlier setting kept goes
        gone = builds.prune(paths, 1, 1)
    else:
        gone = builds.prune(paths, config.store_max_size, config.store_max_age)
    return Pruned(sum(e.files for e in gone), sum(e.size for e in gone), 0)


def prune_all(config: Config, paths: Paths) -> Pruned:
    """Every policy now (extmod cache prune)."""
    files = size = 0
    for base in thinlto_bases(config, paths):
        r = thinlto.prune(base, config)
        files, size = files + r.files, size + r.bytes
    kept = prune_kept(config, paths)
    stored = prune_store(config, paths)
    return Pruned(
        files + kept.files + stored.files, size + kept.size + stored.size, kept.build_dirs
    )


def show(
    config: Config, paths: Paths
) -> tuple[list[thinlto.Namespace], list[KeptBuild], list[builds.Entry]]:
    """``cache show``: every ThinLTO cache namespace, the kept build dirs, the build store."""
    spaces = [ns for base in thinlto_bases(config, paths) for ns in thinlto.namespaces(base)]
    return spaces, kept_builds(paths), builds.entries(paths)


def store_policy(config: Config) -> str:
    if not config.store_max_size:
        return "no store"
    age = f"{config.store_max_age} s" if config.store_max_age else "no age bound"
    return f"{config.store_max_size} bytes, {age}"


def keep_policy(config: Config) -> str:
    size = f"{config.build_keep_max_size} bytes" if config.build_keep_max_size else "no size bound"
    age = f"{config.build_keep_max_age} s" if config.build_keep_max_age else "no age bound"
    return f"{size}, {age}"


def policy(config: Config) -> str:
    """Both bounds, as ``cache prune`` says them."""
    return (
        f"{thinlto.policy(config)}; kept build dirs: {keep_policy(config)}; "
        f"build store: {store_policy(config)}"
    )
