"""One package for one kernel: sync sources into a private build dir, run kbuild, collect.

Never builds in the source dir, never writes in the kernel tree. The build dir is kept per
(package, kernel) and synced from the source by content, so make skips unchanged objects;
it is wiped when the kernel, the toolchain or the make line changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from extmod import __version__
from extmod.builder import loadcheck, pathmap, reuse, schedule
from extmod.core import atomic, digest, files, hints, run
from extmod.core.config import Config
from extmod.core.errors import BuildError, EnvError, ExcludedError, UserError
from extmod.core.paths import Paths
from extmod.kernel import finish, signing, thinlto, toolchain
from extmod.kernel.kernel import KBUILD_CACHE_NONE, Kernel
from extmod.source import context, package
from extmod.source.context import conf_kernel, dkms_context
from extmod.store import builds, schema
from extmod.store.state import Added, BuildRecord, Built, BuiltModule, State

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_OBJ_M = re.compile(r"^\s*obj-(?:m|\$\([A-Z0-9_]+\))\s*[:+]?=", re.M)
# First lines worth showing a person, in order of preference.
_ERROR_PATTERNS = (
    re.compile(r"^.*No space left on device.*$", re.M),
    re.compile(r"^(?P<loc>[^\s:]+:\d+(?::\d+)?): (?:fatal )?error: .*$", re.M),
    re.compile(r"^.*\bLLVM ERROR: .*$", re.M),
    re.compile(r"^.*(?:ld\.lld|ld)(?:-\d+)?: error: .*$", re.M),
    re.compile(r"^ERROR: .*$", re.M),
    re.compile(r"^.*\*\*\* .*$", re.M),
)

Reporter = Callable[[str], None]


def package_name(src: Path, name: str | None) -> str:
    chosen = name or src.resolve().name
    if not _NAME.match(chosen):
        raise UserError(
            f"{src}: package name {chosen!r} is not a valid name "
            f"(letters, digits, '_.+-'; give one with --name)"
        )
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


@dataclass(frozen=True)
class _Lto:
    make_vars: tuple[str, ...]
    cache_dir: Path | None
    cache_source: str | None
    cache_base: Path | None

    def keep_only_current(self, kver: str, package: str) -> None:
        if self.cache_dir is not None and self.cache_base is not None:
            thinlto.drop_other_namespaces(self.cache_base, kver, package, keep=self.cache_dir.name)


def _thinlto_setup(
    config: Config,
    kernel: Kernel,
    tc: toolchain.Toolchain,
    resolved: toolchain.Resolved,
    paths: Paths,
    src: Path,
    name: str,
    meta: Path,
) -> _Lto:
    """The LD= wrapper that puts extmod's ThinLTO cache flags after kbuild's (lld takes the
    last --thinlto-cache-dir), or a throwaway cache where kbuild insists on one."""
    scratch = meta / "thinlto-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    wrapper = meta / "ld.lld"
    if tc.lto != "thin" or not resolved.ld:
        return _Lto((), None, None, None)
    if config.thinlto_cache == "off":
        if kernel.kbuild_cache == KBUILD_CACHE_NONE:
            return _Lto((), None, None, None)
        # kbuild insists on a cache here (5.12-6.9): give it a throwaway one.
        scratch.mkdir()
        thinlto.write_ld_wrapper(wrapper, resolved.ld, scratch, "prune_after=0s")
        return _Lto((f"LD={wrapper}",), None, None, None)
    choice = thinlto.resolve_base(config, kernel, paths)
    fp = thinlto.fingerprint(src, kernel, resolved.version_line)
    cache_dir = thinlto.namespace(choice.base, kernel.release, name, fp)
    thinlto.ensure_dir(cache_dir)
    thinlto.write_ld_wrapper(wrapper, resolved.ld, cache_dir, thinlto.policy(config))
    return _Lto((f"LD={wrapper}",), cache_dir, choice.source, choice.base)


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


def _prepare_build_dir(
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


def _sync(src: Path, tree: Path, manifest_file: Path) -> None:
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


def _publish(built: list[Path], tree: Path, out: Path) -> tuple[Path, ...]:
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


# -- dkms.conf packages ------------------------------------------------------------------------


@dataclass(frozen=True)
class PackageRequest:
    added: Added
    kernel: Kernel
    echo: bool = False
    package: package.Package | None = None  # already evaluated for this kernel, if so
    jobserver: schedule.Jobserver | None = None  # the command's job budget, shared by make
    inputs: str = ""  # digest of everything the build depends on (recorded in build.json)
    versions: toolchain.VersionMemo | None = None
    user: run.RunAs | None = None  # --build-user: every step of the build runs as this user
    other_exports: frozenset[str] = frozenset()  # what BUILD_DEPENDS modules export
    # signing.signer(kernel, ...) when the caller has it already (None: look it up here)
    signing: tuple[signing.Signer | None, str | None] | None = None
    # An ad hoc build (adhoc_package): the modules as make left them are copied here, and
    # nothing is recorded in the state tree.
    out_dir: Path | None = None
    stores: reuse.Stores | None = None  # the command's build stores: a build is filed there


@dataclass(frozen=True)
class PackageResult:
    package: package.Package
    built: Built | None  # the record in the state tree (None: an ad hoc build)
    modules: tuple[Path, ...]  # the finished modules (ad hoc: as make left them)
    build_dir: Path
    log: Path
    reproducer: str
    compiler: str
    cache_dir: Path | None  # the ThinLTO cache this build used
    cache_source: str | None  # where that choice came from (flag, env, config, default)
    seconds: float
    notes: tuple[str, ...]


def load_package(
    added: Added,
    kernel: Kernel,
    paths: Paths,
    config: Config,
    source_digest: str | None = None,
    user: run.RunAs | None = None,
) -> package.Package:
    """dkms.conf evaluated for ``kernel``; with ``source_digest``, the evaluation is kept
    in the build dir and reused while its inputs are the same (package.load)."""
    bdir = paths.build_dir(added.name, kernel.release, added.version)
    memo = bdir / ".extmod" / "dkms-conf.json" if source_digest is not None else None
    view = pathmap.view(kernel, paths, config, added.name, added.version, user)
    ctx = dkms_context(paths, config, added.name, added.version, kernel.release, user, view)
    return package.load(
        added.source, conf_kernel(kernel, view), ctx, memo=memo, key_extra=source_digest or ""
    )


def read_environment(path: Path | None) -> dict[str, str]:
    """[build] environment: the variables bash exports after sourcing ``path`` in a clean
    environment (DKMS 3.3 prepare_build: ``source <( (source FILE; export -p) )``), less
    those of the clean environment itself; PATH stays extmod's. None: no file set."""
    if path is None:
        return {}
    if not path.is_file():
        raise UserError(f"build.environment: {path} is not a file")
    clean = run.scrubbed_env()
    script = 'source "$1" >/dev/null 2>&1; env -0'
    try:
        res = run.query(["bash", "-c", script, "build-environment", path], env=clean, timeout=30)
    except subprocess.TimeoutExpired:
        raise UserError(f"build.environment: {path}: sourcing it took over 30 s") from None
    if res.returncode != 0:
        raise UserError(f"build.environment: {path}: bash could not read it")
    base = run.query(["bash", "-c", "env -0"], env=clean, timeout=30).stdout
    before = set(base.split(b"\0"))
    out: dict[str, str] = {}
    for item in res.stdout.split(b"\0"):
        if item in before or b"=" not in item:
            continue
        name, _, value = item.decode("utf-8", "replace").partition("=")
        if name not in ("PATH", "_", "SHLVL", "PWD", "OLDPWD"):
            out[name] = value
    return out


def inputs_digest(
    pkg: package.Package,
    kernel: Kernel,
    resolved: toolchain.Resolved,
    sign: signing.Signer | None,
    source_digest: str,
    environment: Mapping[str, str] | None = None,
    dependencies: tuple[str, ...] = (),
    places: Mapping[Path, str] | None = None,
) -> str:
    """What a finished build depends on: the source tree's content, dkms.conf as evaluated
    for this kernel, the kernel (release, auto.conf, Module.symvers), the compiler, the
    signing certificate, [build] environment's variables, the builds of its BUILD_DEPENDS
    and extmod itself. The same digest means the same modules.

    Where things sit is not what they are: the paths in the evaluated dkms.conf (``make
    -C ROOT/lib/modules/KVER/build M=STATE/...``) are written by what they are (``places``:
    the kernel's trees, the state dir, the root), so a root copied elsewhere keeps its
    builds and a host at another path fetches them from a shared store."""
    conf = {k: v for k, v in pkg.__dict__.items() if k not in ("warnings", "source", "conf_files")}
    text = digest.of(conf) if not places else _placeless(conf, places)
    cert = digest.file(sign.cert) if sign is not None and sign.cert.is_file() else None
    return digest.of(
        source_digest,
        text,
        kernel.identity(),
        resolved.version_line,
        resolved.make_vars,
        cert,
        sign.hash if sign else None,
        __version__,
        *([sorted(environment.items())] if environment else []),
        *([dependencies] if dependencies else []),
    )


def places_of(kernel: Kernel, paths: Paths) -> dict[Path, str]:
    """The paths a build's inputs name by what they are (``inputs_digest``)."""
    found = {
        kernel.build_dir: "$kernel",
        kernel.source_dir_as_named: "$kernel",
        paths.state_dir: "$state",
        paths.kernels_dir: "$modules",
        paths.source_tree: "$usr_src",
    }
    if kernel.named is not None and kernel.named.parent.parent.name == "modules":
        found[kernel.named.parent.parent] = "$modules"  # a kernel staged elsewhere (preflight)
    if kernel.split_source is not None:
        found[kernel.split_source] = "$kernel_source"
    if paths.root != Path("/"):
        found[paths.root] = "$root"
    return found


def _placeless(conf: Mapping[str, object], places: Mapping[Path, str]) -> str:
    text = json.dumps(conf, sort_keys=True, default=str)
    for path in sorted(places, key=lambda p: len(str(p)), reverse=True):
        text = re.sub(re.escape(str(path)) + r"(?=[/\s\"':]|$)", places[path], text)
    return text


ADHOC = "_adhoc"  # the version of a made-up package (a bare kbuild dir, no dkms.conf)


def adhoc_package(
    src: Path, name: str, kernel: Kernel, paths: Paths, config: Config
) -> package.Package:
    """A bare kbuild dir as the package DKMS would make of it: DKMS's default MAKE (with
    kbuild's ``modules`` target) and CLEAN, no scripts, and every module make leaves
    (``modules`` is filled in after MAKE: a bare dir lists none)."""
    check_source(src)
    view = pathmap.view(kernel, paths, config, name, ADHOC, None)
    if view is not None:
        kdir, dkms_tree = context.view_kernel_build(view.root), context.view_dkms_tree(view.root)
    else:
        kdir, dkms_tree = kernel.build_dir, paths.dkms_tree(name, ADHOC, kernel.release)
    make = f"make -C {kdir} M={dkms_tree}/{name}/{ADHOC}/build"
    return package.Package(
        name=name,
        version=ADHOC,
        source=src,
        conf_files=(),
        modules=(),
        make=f"{make} modules",
        clean=f"{make} clean",
        patches=(),
        pre_build="",
        post_build="",
        post_add="",
        pre_install="",
        post_install="",
        post_remove="",
        autoinstall=False,
        build_depends=(),
        no_weak_modules=False,
        excluded=None,
    )


def build_package(
    req: PackageRequest, config: Config, paths: Paths, state: State, say: Reporter
) -> PackageResult:
    """Build one package for one kernel, DKMS-style, in its own dkms_tree. The phases:
    prepare the tree, run the steps (CLEAN, PATCH, PRE_BUILD, MAKE, POST_BUILD), check
    that the modules would load, finish them (strip, sign, compress) and publish them in
    the state tree with their record. An ad hoc build (``req.out_dir``) is the same up to
    the load check, whose problems are notes; its modules are copied out as make left
    them, and nothing is recorded."""
    started, started_at = time.monotonic(), time.time()
    job = _prepare(req, config, paths, say)
    try:
        _run_steps(job)
    finally:
        shutil.rmtree(job.meta / "thinlto-scratch", ignore_errors=True)
    # Before strip, sign and compress: the modules as make left them.
    checked = [loadcheck.read(job.tree / _built_path(m)) for m in job.pkg.modules]
    exports = loadcheck.kernel_exports(req.kernel)
    problems = loadcheck.check(checked, req.kernel, exports, req.other_exports)
    if exports is None:
        job.notes.append(f"{req.kernel.build_dir}/Module.symvers is missing: symbols not checked")
    if req.out_dir is not None:
        job.notes.extend(f"would not load: {p}" for p in problems)
        files = [job.tree / _built_path(m) for m in job.pkg.modules]
        modules = _publish(files, job.tree, req.out_dir)
        job.lto.keep_only_current(req.kernel.release, job.pkg.name)
        return _result(job, None, modules, time.monotonic() - started)
    return _finish_and_publish(job, state, problems, checked, started=(started, started_at))


def _built_path(m: package.Module) -> str:
    return f"{m.built_location}{m.built_name}.ko"


def _result(
    job: _Job, built: Built | None, modules: tuple[Path, ...], seconds: float
) -> PackageResult:
    return PackageResult(
        package=job.pkg,
        built=built,
        modules=modules,
        build_dir=job.meta.parent,
        log=job.log,
        reproducer=job.reproducer,
        compiler=job.resolved.version_line,
        cache_dir=job.lto.cache_dir,
        cache_source=job.lto.cache_source,
        seconds=seconds,
        notes=tuple(job.notes),
    )


@dataclass
class _Job:
    """One build under way: what the phases of build_package share."""

    req: PackageRequest
    config: Config
    paths: Paths
    pkg: package.Package
    resolved: toolchain.Resolved
    lto: _Lto
    tree: Path  # $dkms_tree/NAME/VERSION/build
    meta: Path  # the build dir's .extmod
    vdir: Path  # $dkms_tree/NAME/VERSION
    log: Path
    env: dict[str, str]
    fds: tuple[int, ...]
    shell_vars: dict[str, str]
    toolchain_args: list[str]
    make_command: str
    view: run.View | None  # release-free paths (pathmap), or None
    reproducer: str
    fresh: bool  # the tree was made afresh: CLEAN runs first
    notes: list[str]
    label: str  # NAME/VERSION, or NAME for an ad hoc build
    jobs: int = 1  # -j of a make outside the command's jobserver

    @property
    def step_dir(self) -> Path:
        """Where CLEAN, MAKE and the scripts start: the build dir, at the view's path when
        there is one (an outer Makefile's $(shell pwd) becomes kbuild's M=)."""
        return self.view.cwd if self.view is not None and self.view.cwd else self.tree


def _prepare(req: PackageRequest, config: Config, paths: Paths, say: Reporter) -> _Job:
    """The kernel's toolchain, the package read for it, the build tree synced from the
    source, the make shim that hands every make the toolchain, the log's header."""
    added, kernel = req.added, req.kernel
    kernel.require_prepared()
    tc = toolchain.from_kernel(kernel)
    if config.thinlto_cache == "on" and tc.lto != "thin":
        raise UserError(f"--thinlto-cache on: kernel {kernel.release} is not a ThinLTO kernel")
    bdir = paths.build_dir(added.name, kernel.release, added.version)
    dkms_tree = paths.dkms_tree(added.name, added.version, kernel.release)
    vdir, meta = dkms_tree / added.name / added.version, bdir / ".extmod"
    pkg = req.package or load_package(added, kernel, paths, config)
    package.check_links(added.source)
    if pkg.excluded:
        raise ExcludedError(f"{pkg.ident} is not for {kernel.release}: {pkg.excluded}")
    resolved = toolchain.resolve(tc, kernel, memo=req.versions)
    launch = _launcher(config, paths)
    notes = _toolchain_notes(pkg, tc, resolved, req)
    # With --build-user the tree is made afresh by root and then handed over: root never
    # writes into a dir the build user has had (a planted symlink would redirect it).
    fresh = bool(pkg.patches or pkg.pre_build) or req.user is not None
    view = pathmap.view(kernel, paths, config, added.name, added.version, req.user)
    _tree_ready(req, pkg, resolved, bdir, vdir, fresh, view)
    lto = _thinlto_setup(config, kernel, tc, resolved, paths, added.source, added.name, meta)
    if req.user is not None:
        for d in (dkms_tree, lto.cache_dir, meta / "thinlto-scratch"):
            if d is not None and d.exists():
                _hand_over(d, req.user)
    # the ThinLTO link stays local, with extmod's cache
    toolchain_args = [*(launch.make_args(resolved) if launch else resolved.make_args())]
    jobs = toolchain.job_slots(config.build_jobs, launch)
    toolchain_args += lto.make_vars
    env, fds = _make_env(req, jobs, meta, toolchain_args, resolved, launch, config)
    ctx = dkms_context(paths, config, added.name, added.version, kernel.release, view=view)
    job = _Job(
        req=req,
        config=config,
        paths=paths,
        pkg=pkg,
        resolved=resolved,
        lto=lto,
        tree=vdir / "build",
        meta=meta,
        vdir=vdir,
        log=bdir / "build.log",
        env=env,
        fds=fds,
        shell_vars=package.shell_vars(conf_kernel(kernel, view), ctx, pkg.name, pkg.version),
        toolchain_args=toolchain_args,
        # DKMS's own rewrite of the MAKE line: the first "make" gets KERNELRELEASE (and -j).
        make_command=re.sub(r"^make\b", f"make KERNELRELEASE={kernel.release}", pkg.make),
        view=view,
        reproducer="",
        fresh=fresh,
        notes=notes,
        label=pkg.name if req.out_dir is not None else pkg.ident,
        jobs=jobs,
    )
    _announce(job, config, say)
    return job


def _launcher(config: Config, paths: Paths) -> toolchain.Launcher | None:
    return toolchain.configured_launcher(config, paths)


def _tree_ready(
    req: PackageRequest,
    pkg: package.Package,
    resolved: toolchain.Resolved,
    bdir: Path,
    vdir: Path,
    fresh: bool,
    view: run.View | None,
) -> None:
    """``$dkms_tree/NAME/VERSION/build`` holding the source (wiped first when what its
    objects were built against changed), and ``source`` linking to the source dir."""
    tree, meta = vdir / "build", bdir / ".extmod"
    conf_text = "".join(f.read_text(errors="replace") for f in pkg.conf_files)
    _prepare_build_dir(
        bdir,
        tree,
        meta,
        req.kernel,
        resolved,
        fresh=fresh,
        extra={
            "conf": hashlib.sha256(conf_text.encode()).hexdigest(),
            "make_command": pkg.make,
            "view": view is not None,  # objects made in the view name its paths
        },
    )
    _sync(req.added.source, tree, meta / "manifest.json")
    source_link = vdir / "source"
    source_link.unlink(missing_ok=True)
    source_link.symlink_to(req.added.source)


def _make_env(
    req: PackageRequest,
    jobs: int,
    meta: Path,
    toolchain_args: list[str],
    resolved: toolchain.Resolved,
    launch: toolchain.Launcher | None,
    config: Config,
) -> tuple[dict[str, str], tuple[int, ...]]:
    """The environment of every step: the make shim first on PATH, the job budget's
    jobserver, and CC. DKMS 3.0.10 exports CC for PRE_BUILD (prepare_build:
    CONFIG_CC_VERSION_TEXT's first word) and for MAKE (actual_build: .kernelvariables' CC),
    so a package's own configure script or outer Makefile uses the kernel's compiler:
    here, the one extmod resolved (clang-16 too, where DKMS leaves clang kernels' outer
    makes with "cc"). With [build] launcher, CC is the launcher and the compiler."""
    shim_dir = meta / "bin"
    _write_make_shim(shim_dir / "make", toolchain_args, jobs)
    env = {"PATH": f"{shim_dir}:{run.scrubbed_env()['PATH']}", "CC": resolved.cc_name}
    if launch is not None:  # the launcher's own settings (CCACHE_DIR ...), and its CC
        env |= dict(launch.env) | {"CC": launch.wrap(resolved.cc_name)}
    fds: tuple[int, ...] = ()
    if req.jobserver is not None:
        env |= req.jobserver.make_env()
        fds = req.jobserver.pass_fds
    # [build] environment: DKMS sources it after it sets CC, so its values win (not PATH)
    return env | read_environment(config.build_environment), fds


def _announce(job: _Job, config: Config, say: Reporter) -> None:
    """The reproducer (with the shim's words where one make gets them all), said and
    written at the head of the build log."""
    kernel, args = job.req.kernel, job.toolchain_args
    job.reproducer = f"cd {job.tree} && {job.make_command}"
    if job.view is not None:  # the real paths: a person runs it outside the view
        job.reproducer = job.view.to_real(job.reproducer)
    one_make = not re.search(r"[;&|<>()`$]", job.make_command)
    if one_make:
        job.reproducer += f" {shlex.join(args)}"
    say(f"building {job.label} for {kernel.release} with {job.resolved.version_line}")
    say(f"+ {job.reproducer}")
    if not one_make:
        say(f"  (every make gets: {shlex.join([*args, f'-j{job.jobs}'])})")
    if job.view is not None:
        say(f"  (compiles see {job.view.root}/kernel and {job.view.root}/dkms: build.map_paths)")
    job.log.write_text(
        f"# extmod build of {job.label} for {kernel.release}\n"
        f"# compiler: {job.resolved.version_line}\n# {job.reproducer}\n"
        f"# every make gets: {shlex.join(args)}\n"
    )


def _toolchain_notes(
    pkg: package.Package, tc: toolchain.Toolchain, resolved: toolchain.Resolved, req: PackageRequest
) -> list[str]:
    notes = list(pkg.warnings)
    if tc.version_text and resolved.version_line != tc.version_text:
        notes.append(
            f"compiler differs from the kernel's: kernel {tc.version_text!r}, "
            f"here {resolved.version_line!r}"
        )
    unprotected = run.readonly_supported() if req.user is None and os.geteuid() == 0 else None
    if unprotected:
        notes.append(
            f"the kernel's trees are not write-protected during this build: "
            f"{unprotected} (--build-user protects them)"
        )
    return notes


def _step(job: _Job, what: str, argv: list[str], ignore: bool = False) -> None:
    """One step of the build, logged; its failure is the build's error (first error, log)."""
    kernel = job.req.kernel
    with open(job.log, "a") as f:
        f.write(f"# {what}\n")
    try:
        run.run_logged(
            argv,
            log=job.log,
            cwd=job.tree,
            echo=job.req.echo,
            env=job.env,
            pass_fds=job.fds,
            user=job.req.user,
            readonly=kernel.source_trees,
            view=job.view,
        )
    except run.CommandFailed:
        if not ignore:
            raise BuildError(
                f"{what} of {job.label} for {kernel.release} failed: "
                f"{first_error(job.log, kernel.source_trees, job.view)} (log: {job.log})"
            ) from None


def _run_steps(job: _Job) -> None:
    """CLEAN (on a fresh tree), PATCH, PRE_BUILD, MAKE, then POST_BUILD, as DKMS runs them."""
    pkg, tree, kernel = job.pkg, job.tree, job.req.kernel
    if job.fresh:
        _step(
            job,
            "CLEAN",
            package.command_argv(job.shell_vars, job.step_dir, pkg.clean, pkg.directives),
            ignore=True,
        )
    for name in pkg.patches:
        patch = tree / "patches" / name
        if not patch.is_file():
            raise BuildError(f"{pkg.conf_files[0]}: PATCH: {patch} does not exist")
        _step(job, f"PATCH {name}", ["patch", "-p1", "-i", str(patch)])
    if pkg.pre_build:
        _step(job, "PRE_BUILD", package.script_argv(job.shell_vars, job.step_dir, pkg.pre_build))
    make = package.command_argv(job.shell_vars, job.step_dir, job.make_command, pkg.directives)
    _step(job, "MAKE", make)
    if job.req.out_dir is not None:
        job.pkg = pkg = dataclasses.replace(pkg, modules=_every_module(job))
    missing = [
        m for m in pkg.modules if not _built_file(tree, f"{m.built_location}{m.built_name}.ko")
    ]
    if missing:
        # A MAKE line like `make ...; find ...` hides make's status: say why if the log
        # knows, else which module is missing.
        m = missing[0]
        why = first_error(job.log, view=job.view)
        if why == "make failed":
            why = (
                f"BUILT_MODULE_NAME[{m.index}] {m.built_name}.ko was not built at "
                f"{m.built_location or './'}"
            )
        raise BuildError(f"MAKE of {job.label} for {kernel.release} failed: {why} (log: {job.log})")
    if pkg.post_build:
        base = job.vdir / kernel.release / kernel.arch
        _dkms_base_dir(base, tree, pkg, kernel, job.log)
        if job.req.user is not None:
            _hand_over(base.parent, job.req.user)
        _step(job, "POST_BUILD", package.script_argv(job.shell_vars, job.step_dir, pkg.post_build))


def _finish_and_publish(
    job: _Job,
    state: State,
    problems: list[str],
    checked: list[loadcheck.Module],
    started: tuple[float, float],
) -> PackageResult:
    """Strip, sign and compress each module into a new built dir, with its record, and
    rename it into the state tree."""
    req, kernel = job.req, job.req.kernel
    added = req.added
    sign, sign_note = req.signing or signing.signer(kernel, job.config, job.paths)
    if sign_note:
        job.notes.append(sign_note)
    compress = finish.compression(kernel)
    exports = tuple(sorted(set().union(*(c.exported for c in checked))))
    _file_in_stores(job, problems, exports, time.monotonic() - started[0])
    final = state.built_dir(added.name, added.version, kernel.release, kernel.arch)
    try:
        tmp = atomic.new_dir_beside(final)
    except OSError as e:
        raise EnvError(f"cannot write {final.parent}: {e.strerror}") from None
    records = _finish_modules(job, tmp, sign, compress)
    shutil.copyfile(job.log, tmp / "make.log")
    seconds = time.monotonic() - started[0]
    record = BuildRecord(
        name=added.name,
        version=added.version,
        kernel=kernel.release,
        arch=kernel.arch,
        built=_now(),
        modules=tuple(records),
        kernel_tree=str(kernel.build_dir),
        kernel_identity=kernel.identity(),
        inputs=req.inputs,
        load_check=tuple(problems),
        exports=exports,
        compiler=job.resolved.version_line,
        reproducer=job.reproducer,
        make_vars=tuple(job.toolchain_args),
        signed=sign is not None,
        compressed=compress[0] if compress else None,
        thinlto_cache_dir=str(job.lto.cache_dir) if job.lto.cache_dir else None,
        seconds=round(seconds, 3),
        started_at=round(started[1], 3),
    )
    built = _publish_record(state, tmp, record)
    job.lto.keep_only_current(kernel.release, added.name)
    return _result(job, built, tuple(built.dir / "module" / m.file for m in built.modules), seconds)


def _file_in_stores(job: _Job, problems: list[str], exports: tuple[str, ...], took: float) -> None:
    """The modules as make left them into the command's build stores (builder/reuse.py),
    before the build's record is published: a crash between the two builds again, and
    that filing removes what the crashed one left."""
    if job.req.stores is None:
        return
    meta = builds.Meta(
        tuple(
            builds.ModuleMeta(m.built_name, m.dest_name, m.dest_location, m.strip)
            for m in job.pkg.modules
        ),
        tuple(problems),
        exports,
        job.resolved.version_line,
        job.reproducer,
        tuple(job.toolchain_args),
        round(took, 3),
    )
    made = {m.dest_name: job.tree / _built_path(m) for m in job.pkg.modules}
    job.notes.extend(job.req.stores.file(job.req.inputs, meta, made))


def _publish_record(state: State, tmp: Path, record: BuildRecord) -> Built:
    """``tmp`` (the finished modules) with its build.json renamed into the state tree."""
    atomic.write_json(tmp / "build.json", record.to_json())
    state.publish_built(tmp, record.name, record.version, record.kernel, record.arch)
    built = state.find_built(record.name, record.version, record.kernel, record.arch)
    assert built is not None
    return built


def from_store(
    req: PackageRequest, stored: builds.Stored, config: Config, paths: Paths, state: State
) -> PackageResult:
    """The build ``stored`` (filed under ``req.inputs``) made this pair's build without
    make: its modules stripped, signed with the current key and compressed as a build
    would, and published with their record, which names the store."""
    kernel, added = req.kernel, req.added
    started = time.monotonic()
    sign, sign_note = req.signing or signing.signer(kernel, config, paths)
    resolved = toolchain.resolve(toolchain.from_kernel(kernel), kernel, memo=req.versions)
    compress = finish.compression(kernel)
    final = state.built_dir(added.name, added.version, kernel.release, kernel.arch)
    tmp = atomic.new_dir_beside(final)
    records = reuse.materialize(stored, tmp, resolved.strip, sign, compress)
    record = BuildRecord(
        name=added.name,
        version=added.version,
        kernel=kernel.release,
        arch=kernel.arch,
        built=_now(),
        modules=tuple(records),
        kernel_tree=str(kernel.build_dir),
        kernel_identity=kernel.identity(),
        inputs=req.inputs,
        load_check=stored.meta.load_check,
        exports=stored.meta.exports,
        compiler=stored.meta.compiler,
        reproducer=stored.meta.reproducer,
        make_vars=stored.meta.make_vars,
        signed=sign is not None,
        compressed=compress[0] if compress else None,
        seconds=round(time.monotonic() - started, 3),
        started_at=round(time.time(), 3),
        from_store=stored.digest,
    )
    built = _publish_record(state, tmp, record)
    return PackageResult(
        package=req.package
        if req.package is not None
        else load_package(added, kernel, paths, config),
        built=built,
        modules=tuple(built.dir / "module" / m.file for m in built.modules),
        build_dir=paths.build_dir(added.name, kernel.release, added.version),
        log=paths.build_dir(added.name, kernel.release, added.version) / "build.log",
        reproducer=stored.meta.reproducer or "",
        compiler=stored.meta.compiler or "",
        cache_dir=None,
        cache_source=None,
        seconds=time.monotonic() - started,
        notes=(sign_note,) if sign_note else (),
    )


def _finish_modules(
    job: _Job, tmp: Path, sign: signing.Signer | None, compress: tuple[str, list[str]] | None
) -> list[BuiltModule]:
    """Each module copied into ``tmp/module`` by its DEST_MODULE_NAME and finished there."""
    records = []
    for m in job.pkg.modules:
        staged = tmp / "module" / f"{m.dest_name}.ko"
        staged.parent.mkdir(exist_ok=True)
        shutil.copyfile(job.tree / _built_path(m), staged)
        done = finish.finish_module(
            staged, strip=job.resolved.strip if m.strip else None, sign=sign, compress=compress
        )
        records.append(
            BuiltModule(
                built_name=m.built_name,
                dest_name=m.dest_name,
                dest_location=m.dest_location,
                file=done.name,
                sha256=digest.file(done),
            )
        )
    return records


def _dkms_base_dir(base: Path, tree: Path, pkg: package.Package, kernel: Kernel, log: Path) -> None:
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


def _hand_over(top: Path, user: run.RunAs) -> None:
    """chown a dir tree that root just made to the build user (links themselves only)."""
    for dirpath, dirnames, filenames in os.walk(top):
        for n in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, n), user.uid, user.gid, follow_symlinks=False)
    os.chown(top, user.uid, user.gid)


def _every_module(job: _Job) -> tuple[package.Module, ...]:
    """What make left in an ad hoc build's tree: every .ko, by its place in the tree."""
    found = sorted(p.relative_to(job.tree) for p in job.tree.rglob("*.ko") if p.is_file())
    if not found:
        raise BuildError(
            f"build of {job.label} for {job.req.kernel.release} made no .ko (log: {job.log})"
        )
    return tuple(
        package.Module(
            index=i,
            built_name=rel.name[: -len(".ko")],
            built_location="" if rel.parent == Path(".") else f"{rel.parent}/",
            dest_name=rel.name[: -len(".ko")],
            dest_location="/extra",
            strip=False,
        )
        for i, rel in enumerate(found)
    )


def _built_file(tree: Path, rel: str) -> bool:
    """A built module is a regular file inside the tree: not a link a (build) user made to
    lead root's copy elsewhere."""
    p = tree / rel
    return p.is_file() and not p.is_symlink() and tree.resolve() in p.resolve().parents


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_make_shim(path: Path, toolchain_args: list[str], jobs: int) -> None:
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
