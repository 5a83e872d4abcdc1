"""One package for one kernel: sync sources into a private build dir, run kbuild, collect.

Never builds in the source dir, never writes in the kernel tree. The build dir is kept per
(package, kernel) and synced from the source by content, so make skips unchanged objects;
it is wiped when the kernel, the toolchain or the make line changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from extmod import run, thinlto, toolchain
from extmod.config import Config
from extmod.errors import BuildError, EnvError, UserError
from extmod.kernel import KBUILD_CACHE_NONE, Kernel
from extmod.paths import Paths

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_OBJ_M = re.compile(r"^\s*obj-(?:m|\$\([A-Z0-9_]+\))\s*[:+]?=", re.M)
# First lines worth showing a person, in order of preference.
_ERROR_PATTERNS = (
    re.compile(r"^(?P<loc>[^\s:]+:\d+(?::\d+)?): (?:fatal )?error: .*$", re.M),
    re.compile(r"^.*\bLLVM ERROR: .*$", re.M),
    re.compile(r"^.*(?:ld\.lld|ld)(?:-\d+)?: error: .*$", re.M),
    re.compile(r"^ERROR: .*$", re.M),
    re.compile(r"^.*\*\*\* .*$", re.M),
)

Reporter = Callable[[str], None]


@dataclass(frozen=True)
class Request:
    src: Path
    name: str
    kernel: Kernel
    out_dir: Path | None = None
    echo: bool = False  # copy make's output to stderr as it runs (-v)


@dataclass(frozen=True)
class Result:
    name: str
    kver: str
    modules: tuple[Path, ...]
    build_dir: Path
    log: Path
    reproducer: str
    compiler: str
    cache_dir: Path | None
    cache_source: str | None
    seconds: float
    notes: tuple[str, ...] = field(default=())


def package_name(src: Path, name: str | None) -> str:
    chosen = name or src.resolve().name
    if not _NAME.match(chosen):
        raise UserError(f"{src}: package name {chosen!r} is not a valid name "
                        f"(letters, digits, '_.+-'; give one with --name)")
    return chosen


def check_source(src: Path) -> None:
    if not src.is_dir():
        raise UserError(f"{src}: source dir does not exist")
    files = [src / n for n in ("Kbuild", "Makefile") if (src / n).is_file()]
    if not files:
        raise UserError(f"{src}: neither Kbuild nor Makefile found")
    for f in files:
        try:
            if _OBJ_M.search(f.read_text(encoding="utf-8", errors="replace")):
                return
        except OSError as e:
            raise UserError(f"{f}: cannot read: {e.strerror}") from None
    raise UserError(f"{files[0]}: no obj-m line: not a kbuild external module")


def build(req: Request, config: Config, paths: Paths, say: Reporter) -> Result:
    started = time.monotonic()
    check_source(req.src)
    kernel = req.kernel
    kernel.require_prepared()
    tc = toolchain.from_kernel(kernel)
    if config.thinlto_cache == "on" and tc.lto != "thin":
        raise UserError(f"--thinlto-cache on: kernel {kernel.release} is not a ThinLTO kernel")
    resolved = toolchain.resolve(tc, kernel)
    notes: list[str] = []
    if tc.version_text and resolved.version_line != tc.version_text:
        notes.append(f"compiler differs from the kernel's: kernel {tc.version_text!r}, "
                     f"here {resolved.version_line!r}")

    bdir = paths.build_dir(req.name, kernel.release)
    tree, meta = bdir / "tree", bdir / ".extmod"
    make_vars = list(resolved.make_args())
    _prepare_build_dir(bdir, tree, meta, kernel, resolved)
    _sync(req.src, tree, meta / "manifest.json")

    cache_dir: Path | None = None
    cache_source: str | None = None
    cache_base: Path | None = None
    scratch = meta / "thinlto-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    if tc.lto == "thin" and resolved.ld:
        if config.thinlto_cache == "off":
            if kernel.kbuild_cache != KBUILD_CACHE_NONE:
                # kbuild insists on a cache here: give it a throwaway one in the build dir.
                scratch.mkdir()
                thinlto.write_ld_wrapper(meta / "ld.lld", resolved.ld, scratch, "prune_after=0s")
                make_vars.append(f"LD={meta / 'ld.lld'}")
        else:
            choice = thinlto.resolve_base(config, kernel, paths)
            fp = thinlto.fingerprint(req.src, kernel, resolved.version_line)
            cache_base, cache_source = choice.base, choice.source
            cache_dir = thinlto.namespace(cache_base, kernel.release, req.name, fp)
            thinlto.ensure_dir(cache_dir)
            thinlto.write_ld_wrapper(meta / "ld.lld", resolved.ld, cache_dir,
                                     thinlto.policy(config))
            make_vars.append(f"LD={meta / 'ld.lld'}")

    jobs = config.build_jobs or os.cpu_count() or 1
    argv = ["make", "-C", str(kernel.build_dir), f"M={tree}", *make_vars, f"-j{jobs}",
            "modules"]
    reproducer = shlex.join(argv)
    say(f"building {req.name} for {kernel.release} with {resolved.version_line}")
    say(f"+ {reproducer}")
    log = bdir / "build.log"
    log.write_text(f"# extmod build of {req.name} for {kernel.release}\n"
                   f"# compiler: {resolved.version_line}\n# {reproducer}\n")
    try:
        run.run_logged(argv, log=log, cwd=bdir, echo=req.echo)
    except run.CommandFailed:
        raise BuildError(f"build of {req.name} for {kernel.release} failed: "
                         f"{first_error(log)} (log: {log})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    built = sorted(p for p in tree.rglob("*.ko") if p.is_file())
    if not built:
        raise BuildError(f"build of {req.name} for {kernel.release} made no .ko "
                         f"(log: {log})")
    out = req.out_dir or paths.output_dir(req.name, kernel.release)
    modules = _publish(built, tree, out)
    if cache_dir is not None and cache_base is not None:
        thinlto.drop_other_namespaces(cache_base, kernel.release, req.name,
                                      keep=cache_dir.name)
    return Result(name=req.name, kver=kernel.release, modules=modules, build_dir=bdir, log=log,
                  reproducer=reproducer, compiler=resolved.version_line, cache_dir=cache_dir,
                  cache_source=cache_source, seconds=time.monotonic() - started,
                  notes=tuple(notes))


def first_error(log: Path) -> str:
    text = log.read_text(encoding="utf-8", errors="replace")
    for pattern in _ERROR_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(0).strip()
    return "make failed"


def _prepare_build_dir(bdir: Path, tree: Path, meta: Path, kernel: Kernel,
                       resolved: toolchain.Resolved) -> None:
    """Create the build dir; wipe it if what its objects were built against has changed."""
    stamp = json.dumps({"kernel": kernel.identity(), "tree": str(kernel.build_dir),
                        "compiler": resolved.version_line,
                        "make": list(resolved.make_vars)}, sort_keys=True)
    stamp_file = meta / "inputs.json"
    try:
        if stamp_file.exists() and stamp_file.read_text() != stamp:
            shutil.rmtree(tree)
            (meta / "manifest.json").unlink(missing_ok=True)
        tree.mkdir(parents=True, exist_ok=True)
        meta.mkdir(exist_ok=True)
        _atomic_write(stamp_file, stamp)
    except OSError as e:
        raise EnvError(f"cannot write build dir {bdir}: {e.strerror}") from None


def _sync(src: Path, tree: Path, manifest_file: Path) -> None:
    """Make ``tree`` hold ``src``'s files. Unchanged files keep their mtime, so make skips
    their objects; changed ones get a fresh mtime, so make rebuilds them even if the source
    mtime is old. Files gone from src since the last sync are removed; build outputs stay."""
    try:
        old: dict[str, str] = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        old = {}
    new: dict[str, str] = {}
    src = src.resolve()
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(filenames):
            f = Path(dirpath) / name
            if not f.is_file():
                continue
            rel = str(f.relative_to(src))
            data = f.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            new[rel] = digest
            dest = tree / rel
            if old.get(rel) == digest and dest.is_file():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_bytes(dest, data, mode=f.stat().st_mode & 0o777)
    for rel in old.keys() - new.keys():
        (tree / rel).unlink(missing_ok=True)
    _atomic_write(manifest_file, json.dumps(new, sort_keys=True))


def _publish(built: list[Path], tree: Path, out: Path) -> tuple[Path, ...]:
    """Copy the .ko files into ``out``, replacing it whole: a temp dir beside it, renamed."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        names = []
        for ko in built:
            dest = tmp / ko.relative_to(tree)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ko, dest)
            names.append(ko.relative_to(tree))
        tmp.chmod(0o755)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise EnvError(f"cannot write output dir {out}: {e.strerror}") from None
    return tuple(out / n for n in names)


def _atomic_write(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode(), mode=0o644)


def _atomic_write_bytes(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.extmod-tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.rename(path)


def clean(paths: Paths, package: str | None, kver: str | None) -> list[Path]:
    """Remove build dirs of a package and/or kernel (both None: all)."""
    root = paths.state_dir / "build"
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for pdir in sorted(root.iterdir()):
        if package is not None and pdir.name != package:
            continue
        for kdir in sorted(pdir.iterdir()):
            if kver is None or kdir.name == kver:
                shutil.rmtree(kdir)
                removed.append(kdir)
        if not any(pdir.iterdir()):
            pdir.rmdir()
    return removed
