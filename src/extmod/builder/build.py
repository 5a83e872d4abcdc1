"""One package for one kernel, as a recipe of named phases (``build_package``): prepare the
kept build dir (``builddir``), run the steps (CLEAN, PATCH, PRE_BUILD, MAKE, POST_BUILD),
check that the modules would load (``loadcheck``), file them in the build stores
(``reuse``), finish them (strip, sign, compress) and publish them with their record
(``record``). The rooms beside: ``adhoc`` (a bare kbuild dir as a package), ``lto`` (the
ThinLTO linker wrapper), ``inputs`` (what a build depends on, as one digest), ``diagnose``
(the first error of a failed build).

Never builds in the source dir, never writes in the kernel tree. The build dir is kept per
(package, kernel) and synced from the source by content, so make skips unchanged objects;
it is wiped when the kernel, the toolchain or the make line changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from extmod.builder import builddir, diagnose, loadcheck, pathmap, record, reuse, schedule
from extmod.builder import lto as lto_mod
from extmod.builder.inputs import read_environment
from extmod.core import atomic, digest, run
from extmod.core.config import Config
from extmod.core.errors import BuildError, EnvError, ExcludedError, MakeFailed, UserError
from extmod.core.paths import Paths
from extmod.kernel import finish, signing, toolchain
from extmod.kernel.kernel import Kernel
from extmod.source import package, scripts, sourcetree
from extmod.source.context import conf_kernel, dkms_context
from extmod.store import builds
from extmod.store.state import Added, Built, BuiltModule, State

Reporter = Callable[[str], None]


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
    bdir = paths.work_dir(added.name, added.version, kernel.release)
    memo = bdir / ".extmod" / "dkms-conf.json" if source_digest is not None else None
    view = pathmap.view(kernel, paths, config, added.name, added.version, user)
    ctx = dkms_context(paths, config, added.name, added.version, kernel.release, user, view)
    return package.load(
        added.source, conf_kernel(kernel, view), ctx, memo=memo, key_extra=source_digest or ""
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
        modules = builddir.publish(files, job.tree, req.out_dir)
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
    lto: lto_mod.Lto
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
    bdir = paths.work_dir(added.name, added.version, kernel.release)
    dkms_tree = paths.dkms_tree(added.name, added.version, kernel.release)
    vdir, meta = dkms_tree / added.name / added.version, bdir / ".extmod"
    pkg = req.package or load_package(added, kernel, paths, config)
    sourcetree.check_links(added.source)
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
    lto = lto_mod.setup(config, kernel, tc, resolved, paths, added.source, added.name, meta)
    if req.user is not None:
        for d in (dkms_tree, lto.cache_dir, meta / "thinlto-scratch"):
            if d is not None and d.exists():
                builddir.hand_over(d, req.user)
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
    builddir.prepare(
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
    builddir.sync(req.added.source, tree, meta / "manifest.json")
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
    builddir.write_make_shim(shim_dir / "make", toolchain_args, jobs)
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
    except run.CommandFailed as e:
        if ignore:
            return
        why = (
            f"{what} of {job.label} for {kernel.release} failed: "
            f"{diagnose.first_error(job.log, kernel.source_trees, job.view)} (log: {job.log})"
        )
        if what == "MAKE":
            raise MakeFailed(why, e.returncode, job.pkg.make, job.log) from None
        raise BuildError(why) from None


def _run_steps(job: _Job) -> None:
    """CLEAN (on a fresh tree), PATCH, PRE_BUILD, MAKE, then POST_BUILD, as DKMS runs them."""
    pkg, tree, kernel = job.pkg, job.tree, job.req.kernel
    if job.fresh:
        _step(
            job,
            "CLEAN",
            scripts.command_argv(job.shell_vars, job.step_dir, pkg.clean, pkg.directives),
            ignore=True,
        )
    for name in pkg.patches:
        patch = tree / "patches" / name
        if not patch.is_file():
            raise BuildError(f"{pkg.conf_files[0]}: PATCH: {patch} does not exist")
        _step(job, f"PATCH {name}", ["patch", "-p1", "-i", str(patch)])
    if pkg.pre_build:
        _step(job, "PRE_BUILD", scripts.script_argv(job.shell_vars, job.step_dir, pkg.pre_build))
    make = scripts.command_argv(job.shell_vars, job.step_dir, job.make_command, pkg.directives)
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
        why = diagnose.first_error(job.log, view=job.view)
        if why == "make failed":
            why = (
                f"BUILT_MODULE_NAME[{m.index}] {m.built_name}.ko was not built at "
                f"{m.built_location or './'}"
            )
        raise BuildError(f"MAKE of {job.label} for {kernel.release} failed: {why} (log: {job.log})")
    if pkg.post_build:
        base = job.vdir / kernel.release / kernel.arch
        builddir.dkms_base_dir(base, tree, pkg, kernel, job.log)
        if job.req.user is not None:
            builddir.hand_over(base.parent, job.req.user)
        _step(job, "POST_BUILD", scripts.script_argv(job.shell_vars, job.step_dir, pkg.post_build))


def _finish_and_publish(
    job: _Job,
    state: State,
    problems: list[str],
    checked: list[loadcheck.Module],
    started: tuple[float, float],
) -> PackageResult:
    """File the modules as make left them in the build stores, then strip, sign and
    compress each into a new built dir, with its record, and rename it into the state
    tree (filed first: a crash between the two builds again, and that filing removes
    what the crashed one left)."""
    req, kernel = job.req, job.req.kernel
    sign, sign_note = req.signing or signing.signer(kernel, job.config, job.paths)
    if sign_note:
        job.notes.append(sign_note)
    compress = finish.compression(kernel)
    meta = builds.Meta(
        tuple(
            builds.ModuleMeta(m.built_name, m.dest_name, m.dest_location, m.strip)
            for m in job.pkg.modules
        ),
        tuple(problems),
        tuple(sorted(set().union(*(c.exported for c in checked)))),
        job.resolved.version_line,
        job.reproducer,
        tuple(job.toolchain_args),
        round(time.monotonic() - started[0], 3),
    )
    if req.stores is not None:
        made = {m.dest_name: job.tree / _built_path(m) for m in job.pkg.modules}
        job.notes.extend(req.stores.file(req.inputs, meta, made))
    final = state.finished_dir(req.added.name, req.added.version, kernel.release, kernel.arch)
    try:
        tmp = atomic.new_dir_beside(final)
    except OSError as e:
        raise EnvError(f"cannot write {final.parent}: {e.strerror}") from None
    modules = _finish_modules(job, tmp, sign, compress)
    shutil.copyfile(job.log, tmp / "make.log")
    seconds = time.monotonic() - started[0]
    made_record = record.make(
        req.added,
        kernel,
        req.inputs,
        modules,
        meta,
        signed=sign is not None,
        compressed=compress[0] if compress else None,
        seconds=seconds,
        started_at=started[1],
        thinlto_cache_dir=job.lto.cache_dir,
    )
    built = record.publish(state, tmp, made_record)
    job.lto.keep_only_current(kernel.release, req.added.name)
    return _result(job, built, tuple(built.dir / "module" / m.file for m in built.modules), seconds)


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
    final = state.finished_dir(added.name, added.version, kernel.release, kernel.arch)
    tmp = atomic.new_dir_beside(final)
    modules = reuse.materialize(stored, tmp, resolved.strip, sign, compress)
    made_record = record.make(
        added,
        kernel,
        req.inputs,
        modules,
        stored.meta,
        signed=sign is not None,
        compressed=compress[0] if compress else None,
        seconds=time.monotonic() - started,
        started_at=time.time(),
        from_store=stored.digest,
    )
    built = record.publish(state, tmp, made_record)
    bdir = paths.work_dir(added.name, added.version, kernel.release)
    return PackageResult(
        package=req.package or load_package(added, kernel, paths, config),
        built=built,
        modules=tuple(built.dir / "module" / m.file for m in built.modules),
        build_dir=bdir,
        log=bdir / "build.log",
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
