"""The ThinLTO cache: where it goes, how it is bounded, why it is never stale, and cleaning.

How lld is pointed at it. kbuild hands ``$(KBUILD_LDFLAGS)`` to every ``ld.lld -r`` that runs
the ThinLTO backend (Linux 6.1: ``cmd_ld_single_m`` and ``cmd_ld_multi_m`` in
scripts/Makefile.build, ``cmd_ld_ko_o`` in scripts/Makefile.modfinal); in 5.13-6.9 that
holds ``--thinlto-cache-dir=.thinlto-cache``, relative to the kernel tree. No make variable
reaches all three links *after* KBUILD_LDFLAGS (ldflags-y belongs to the module's Kbuild,
LDFLAGS_MODULE only reaches the last one), and lld honours the last ``--thinlto-cache-dir``
it is given. So extmod sets ``LD`` to a two-line wrapper that runs the real ld.lld with the
kernel's arguments followed by extmod's cache dir and policy: one mechanism for 5.12, for
5.13-6.9 and for kernels with no cache at all (6.10+, 6.1.y since June 2024).

Why it is never stale. Upstream dropped the cache (commit aba091547ef6, 6.10) because lld's
cache key hashes the bitcode, and a file pulled in by ``.incbin`` in inline asm is read only
by the backend: change the file, not the C, and lld returns the old object. extmod folds the
content of every file that can be pulled in that way into the cache *namespace*: data files
of the source tree, literal ``.incbin``/``.include`` targets, and, when a source names such a
target through a macro (``.incbin "" BLOB_PATH``), every file of the tree but the C/C++
translation units, which the front end reads and so lld's key already covers. Edits to
ordinary C keep the namespace (that is where the cache pays); edits to anything the backend
reads behind the key change it. Files outside the source tree are covered only through the
kernel's identity (release, auto.conf, Module.symvers) and the compiler version.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from extmod.core import atomic
from extmod.core.config import Config
from extmod.core.errors import EnvError, UserError
from extmod.core.paths import Paths
from extmod.kernel.kernel import Kernel

# Files the compiler front end reads (their content reaches the bitcode, so lld's key).
_CODE_SUFFIXES = {".c", ".h", ".cc", ".cpp", ".hh", ".hpp", ".rs"}
_UNITS = {".c", ".cc", ".cpp"}  # translation units: never .incbin targets in practice
# Files the bitcode never carries but that are not pulled in by .incbin either.
_BUILD_NAMES = {"Makefile", "Kbuild", "Kconfig", "dkms.conf", "extmod.toml", "Makefile.am"}
_BUILD_SUFFIXES = {".mk", ".S", ".s", ".lds", ".sh", ".py", ".in", ".md", ".txt", ".rst"}
_ASM_INCLUDE = re.compile(r"\.(?:incbin|include)\b(?P<rest>[^\n;]*)")
_LITERAL = re.compile(r'^\s*\\?"(?P<path>[^"\\]+)\\?"')

CACHE_FILE_PREFIX = "llvmcache-"


@dataclass(frozen=True)
class CacheChoice:
    base: Path
    source: str  # "flag", "env", "config", "kernel" or "default"


def resolve_base(config: Config, kernel: Kernel | None, paths: Paths) -> CacheChoice:
    """The cache base dir by the documented order: flag, env, config file, kernel, default."""
    source = config.sources.get("thinlto.cache_dir", "default")
    if config.thinlto_cache_dir is not None and source != "default":
        base, where = config.thinlto_cache_dir, source
    elif kernel is not None and kernel.config.get("CONFIG_LTO_CLANG_THIN_CACHEDIR"):
        # The option proposed upstream in 2021 (never merged); honoured when a kernel has it.
        base, where = Path(kernel.config["CONFIG_LTO_CLANG_THIN_CACHEDIR"]), "kernel"
    else:
        base, where = paths.default_cache_dir, "default"
    if not base.is_absolute():
        raise UserError(f"ThinLTO cache dir from {where} must be an absolute path: {base}")
    base = Path(os.path.normpath(base))
    if kernel is not None and base.is_relative_to(kernel.build_dir.resolve()):
        raise UserError(
            f"ThinLTO cache dir {base} (from {where}) is inside the kernel tree "
            f"{kernel.build_dir}; extmod never writes there"
        )
    return CacheChoice(base=base, source=where)


def all_bases(config: Config, kernels: list[Kernel], paths: Paths) -> list[Path]:
    """Every base dir a cache may be in: the configured one and kernels' own."""
    bases = [resolve_base(config, None, paths).base]
    for k in kernels:
        b = resolve_base(config, k, paths).base
        if b not in bases:
            bases.append(b)
    return bases


def policy(config: Config) -> str:
    """The ``--thinlto-cache-policy`` string (LLVM CachePruning syntax, ``:``-joined)."""
    parts = [
        f"cache_size_bytes={config.thinlto_max_size}",
        f"prune_after={config.thinlto_max_age}s",
    ]
    if config.thinlto_max_files:
        parts.append(f"cache_size_files={config.thinlto_max_files}")
    return ":".join(parts)


def fingerprint(src: Path, kernel: Kernel, compiler_line: str) -> str:
    """The .incbin guard: a digest of everything the backend reads that lld's key misses."""
    h = hashlib.sha256()
    h.update(kernel.identity().encode() + b"\0" + compiler_line.encode() + b"\0")
    files = sorted(_tree_files(src))
    pulled: set[Path] = set()
    whole_tree = False
    for f in files:
        if _is_data(f):
            pulled.add(f)
        elif f.suffix in _CODE_SUFFIXES or f.suffix in (".S", ".s"):
            targets = _asm_targets(f, src)
            if targets is None:
                whole_tree = True
                break
            pulled |= targets
    if whole_tree:
        pulled = {f for f in files if f.suffix not in _UNITS}
    for f in sorted(pulled):
        h.update(str(f.relative_to(src) if f.is_relative_to(src) else f).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def _tree_files(src: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file():
                yield p


def _is_data(f: Path) -> bool:
    return not (
        f.suffix in _CODE_SUFFIXES
        or f.suffix in _BUILD_SUFFIXES
        or f.name in _BUILD_NAMES
        or f.name.startswith(".")
    )


def _asm_targets(f: Path, src: Path) -> set[Path] | None:
    """Files named by .incbin/.include in ``f``; None if one is named through a macro."""
    try:
        text = f.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    targets: set[Path] = set()
    for m in _ASM_INCLUDE.finditer(text):
        lit = _LITERAL.match(m.group("rest"))
        if not lit:
            return None
        for base in (f.parent, src):
            cand = base / lit.group("path")
            if cand.is_file():
                targets.add(cand)
                break
        else:
            return None
    return targets


def namespace(base: Path, kver: str, package: str, fp: str) -> Path:
    return base / kver / package / fp


def write_ld_wrapper(path: Path, ld: str, cache_dir: Path, policy_str: str) -> None:
    """Write the LD wrapper (see module docstring); atomically, mode 0755."""
    body = (
        "#!/bin/sh\n"
        "# Written by extmod: lld honours the last --thinlto-cache-dir, so extmod's comes after\n"
        "# kbuild's KBUILD_LDFLAGS (5.13-6.9 put .thinlto-cache in the kernel tree).\n"
        f'exec {shlex.quote(ld)} "$@" --thinlto-cache-dir={shlex.quote(str(cache_dir))} '
        f"--thinlto-cache-policy={shlex.quote(policy_str)}\n"
    )
    atomic.write_text(path, body, mode=0o755)


def ensure_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EnvError(f"cannot create ThinLTO cache dir {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise EnvError(f"ThinLTO cache dir {path} is not writable")


def drop_other_namespaces(base: Path, kver: str, package: str, keep: str) -> None:
    """After a good build, older guard namespaces of this (kernel, package) are dead weight."""
    parent = base / kver / package
    for d in parent.iterdir() if parent.is_dir() else ():
        if d.is_dir() and d.name != keep:
            shutil.rmtree(d, ignore_errors=True)


@dataclass(frozen=True)
class Namespace:
    path: Path
    kver: str
    package: str
    files: int
    size: int
    last_used: float


def namespaces(base: Path) -> list[Namespace]:
    """Every ``<base>/<kver>/<package>/<fingerprint>`` dir with its size and file count."""
    out: list[Namespace] = []
    if not base.is_dir():
        return out
    for ns in sorted(base.glob("*/*/*")):
        if not ns.is_dir():
            continue
        files, size, last = 0, 0, 0.0
        for f in _entries(ns):
            st = f.stat()
            files += 1
            size += st.st_size
            last = max(last, st.st_mtime, st.st_atime)
        out.append(Namespace(ns, ns.parent.parent.name, ns.parent.name, files, size, last))
    return out


def _entries(ns: Path) -> list[Path]:
    """Cache entries; lld's own llvmcache.timestamp (last prune) is not one."""
    return [f for f in ns.iterdir() if f.name.startswith(CACHE_FILE_PREFIX)]


@dataclass(frozen=True)
class PruneResult:
    files: int
    bytes: int


def prune(base: Path, config: Config, now: float | None = None) -> PruneResult:
    """Apply the policy now: age first, then size and file count, least recently used first.

    A file's last use is the later of its mtime and atime. Namespaces left without entries are
    removed.
    """
    now = time.time() if now is None else now
    removed_files = removed_bytes = 0
    for ns in namespaces(base):
        entries = []
        for f in _entries(ns.path):
            st = f.stat()
            entries.append((max(st.st_mtime, st.st_atime), st.st_size, f))
        entries.sort()  # oldest first
        total = sum(e[1] for e in entries)
        count = len(entries)
        for used, size, f in entries:
            too_old = config.thinlto_max_age and now - used > config.thinlto_max_age
            too_big = config.thinlto_max_size and total > config.thinlto_max_size
            too_many = config.thinlto_max_files and count > config.thinlto_max_files
            if not (too_old or too_big or too_many):
                continue
            f.unlink()
            total -= size
            count -= 1
            removed_files += 1
            removed_bytes += size
        if count == 0:
            shutil.rmtree(ns.path)  # lld's llvmcache.timestamp goes with it
            _rmdir_up(ns.path.parent, stop=base)
    return PruneResult(removed_files, removed_bytes)


def remove(base: Path, package: str | None, kver: str | None) -> list[Path]:
    """Remove the cache namespaces of a package and/or kernel (both None: everything)."""
    removed: list[Path] = []
    if not base.is_dir():
        return removed
    for kdir in sorted(base.iterdir()):
        if not kdir.is_dir() or (kver is not None and kdir.name != kver):
            continue
        for pdir in sorted(kdir.iterdir()):
            if package is None or pdir.name == package:
                shutil.rmtree(pdir)
                removed.append(pdir)
        if not any(kdir.iterdir()):
            kdir.rmdir()
    return removed


def _rmdir_up(path: Path, stop: Path) -> None:
    while path != stop and path.is_relative_to(stop):
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent
