"""The DKMS verbs over the state tree: add, build, install, uninstall, unbuild, remove,
autoinstall, status. One ``Session`` per command: it remembers which kernels' module trees
changed and runs depmod once for each at the end, not once per module.

Several (package, kernel) pairs run as one graph under one job budget (``schedule``): the
builds run side by side in threads, sharing the jobserver with their makes; the installs
that follow them take one lock, so the module trees and the state tree change one pair at
a time. A pair whose recorded build has the same inputs digest is not built again.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from extmod import (
    atomic,
    build,
    digest,
    faults,
    install,
    modtree,
    package,
    progress,
    run,
    schedule,
    signing,
    toolchain,
)
from extmod import kernel as kernel_mod
from extmod.config import Config
from extmod.errors import (
    BuildError,
    EnvError,
    ExcludedError,
    ExtmodError,
    LoadCheckError,
    UserError,
)
from extmod.kernel import Kernel
from extmod.paths import Paths
from extmod.state import Added, Built, Installed, State, newest, parse_spec

Reporter = Callable[[str], None]


@dataclass
class Outcome:
    ident: str
    kver: str
    action: str  # added, built, installed, up to date, skipped, failed, uninstalled, ...
    detail: str = ""
    exit_code: int = 0


@dataclass
class Session:
    config: Config
    paths: Paths
    say: Reporter
    echo: bool = False
    force: bool = False  # build again even when the inputs are the same
    depmod: bool = True  # False: dkms --no-depmod (the marker stays for a later command)
    board: progress.Board = field(default_factory=progress.Board)
    state: State = field(init=False)
    touched: set[str] = field(default_factory=set)  # kernels whose module tree changed
    outcomes: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _versions: toolchain.VersionMemo = field(init=False)
    _jobserver: schedule.Jobserver | None = None
    _sources: dict[Path, str] = field(default_factory=dict)
    _weights: dict[Path, float] = field(default_factory=dict)
    _resolved: dict[Path, toolchain.Resolved] = field(default_factory=dict)
    _signers: dict[Path, tuple[signing.Signer | None, str | None]] = field(default_factory=dict)
    _kernels_held: dict[str, int] = field(default_factory=dict)

    build_user: run.RunAs | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.state = State(self.paths)
        if self.config.build_user:
            if os.geteuid() != 0:
                raise UserError(
                    "build.user: only root builds as another user (you already build as yourself)"
                )
            self.build_user = run.RunAs.lookup(self.config.build_user)
        self._versions = toolchain.VersionMemo(self.paths.state_dir / "compilers.json")

    def note(self, text: str) -> None:
        """Something a person should know that is not a failure (also in --json "notes")."""
        self.say(f"note: {text}")
        self.notes.append(text)

    def record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    @contextmanager
    def job(self, added: Added, kernel: Kernel) -> Iterator[None]:
        """One (package, kernel) job, as the progress board shows it."""
        key = (added.ident, kernel.release)
        self.board.phase(key, "checking")
        result = "failed"
        try:
            yield
            with self._lock:
                result = next(
                    (o.action for o in reversed(self.outcomes) if (o.ident, o.kver) == key), "done"
                )
        except ExcludedError:
            result = "skipped"
            raise
        finally:
            self.board.finish(key, result)

    def jobserver(self) -> schedule.Jobserver:
        """The command's job budget (-j, build.jobs; default the number of CPUs)."""
        with self._lock:
            if self._jobserver is None:
                self._jobserver = schedule.Jobserver(self.config.build_jobs or os.cpu_count() or 1)
            return self._jobserver

    # -- add ------------------------------------------------------------------------------
    def add(self, what: str) -> Added:
        """SRC_DIR (copied to /usr/src/NAME-VERSION unless it is there) or NAME/VERSION.
        Everything is checked before anything is written or locked."""
        name, version, dest, copy_from = self.check_add(what)
        with self.state.lock("packages", self.say):
            if copy_from is not None:
                self._copy_source(copy_from, dest, name, version)
            added, new = self.state.add(name, version, dest.absolute())
        if new:
            self.say(f"added {added.ident} from {dest}")
            self.record(Outcome(added.ident, "", "added"))
            self._post_add(added)
        return added

    def check_add(self, what: str) -> tuple[str, str, Path, Path | None]:
        """(name, version, /usr/src dir, the dir to copy there or None)."""
        src = Path(what)
        if src.is_dir():
            conf = src / "dkms.conf"
            if not conf.is_file():
                raise UserError(
                    f"{conf}: no such file (a bare kbuild dir can only be "
                    f"built: extmod build {what} -k KVER)"
                )
            package.check_links(src)
            name, version = package.identify(conf, self._ctx())
            self._validate(src)
            dest = self.paths.source_tree / f"{name}-{version}"
            if src.resolve() == dest.resolve():
                return name, version, dest, None
            if dest.exists():
                if digest.tree(src) == digest.tree(dest):
                    return name, version, dest, None  # the same tree again: use it
                raise UserError(
                    f"{dest} already exists with other content: add "
                    f"{name}/{version} to use it, or remove {name}/{version} "
                    f"and delete it first"
                )
            return name, version, dest, src
        name, maybe_version = parse_spec(what)
        if maybe_version is None:
            raise UserError(f"{what}: give NAME/VERSION or a source dir")
        dest = self.paths.source_tree / f"{name}-{maybe_version}"
        conf = dest / "dkms.conf"
        if not conf.is_file():
            raise UserError(f"{conf}: no such file")
        package.check_links(dest)
        got = package.identify(conf, self._ctx())
        if got != (name, maybe_version):
            raise UserError(
                f"{conf}: PACKAGE_NAME/PACKAGE_VERSION say {got[0]}/{got[1]}, "
                f"not {name}/{maybe_version}"
            )
        self._validate(dest)
        return name, maybe_version, dest, None

    def _copy_source(self, src: Path, dest: Path, name: str, version: str) -> None:
        if dest.exists():
            raise UserError(f"{dest} already exists: add {name}/{version} to use it")
        tmp = atomic.new_dir_beside(dest)
        try:
            # Symlinks are copied as what they point to (a package may link to a sibling
            # dir); dangling ones (Debian's README.gz -> /usr/share/doc) are left out.
            shutil.copytree(src, tmp, symlinks=False, ignore=_dangling, dirs_exist_ok=True)
        except (OSError, shutil.Error) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise EnvError(f"cannot copy {src} to {dest}: {str(e).splitlines()[0][:200]}") from None
        atomic.replace_dir(tmp, dest)

    def _validate(self, src: Path) -> None:
        """Read dkms.conf as a build would, before anything is written (DKMS's add does the
        same for the running kernel): for the newest kernel here, or for none."""
        kernels = [k for k in kernel_mod.find_all(self.paths) if isinstance(k, Kernel)]
        target = (
            build.target_of(kernels[-1])
            if kernels
            else package.Target(
                kver="",
                arch="",
                kernel_source_dir=Path("/nonexistent"),
                kernel_config={},
                version=(),
            )
        )
        package.load(src, target, self._ctx())

    def _ctx(self) -> package.Context:
        return build.context_of(
            self.paths,
            self.paths.state_dir / "build" / ".identify",
            self.build_user,
            timeout=self.config.build_dkms_conf_timeout,
        )

    def _post_add(self, added: Added) -> None:
        conf = package.evaluate(
            added.source / "dkms.conf", None, self._ctx(), added.name, added.version
        )
        script = conf.get("POST_ADD", {}).get(0, "")
        if script:
            self._hook(added, "POST_ADD", script, None)

    def resolve(self, what: str) -> list[Added]:
        """What a verb acts on: a source dir (added if needed), NAME/VERSION or NAME."""
        if Path(what).is_dir():
            return [self.add(what)]
        name, version = parse_spec(what)
        if version is not None and self.state.find_added(name, version) is None:
            return [self.add(what)]  # DKMS: build/install add from /usr/src if needed
        return self.state.select(what)

    # -- what a build depends on --------------------------------------------------------
    def _weight(self, added: Added) -> float:
        """How big a build is likely to be: the bytes of its C sources."""
        with self._lock:
            if added.source in self._weights:
                return self._weights[added.source]
        total = 0
        for dirpath, _, names in os.walk(added.source, followlinks=True):
            for n in names:
                if n.endswith((".c", ".h")):
                    try:
                        total += os.stat(os.path.join(dirpath, n)).st_size
                    except OSError:
                        pass
        with self._lock:
            self._weights[added.source] = float(total)
        return float(total)

    def source_digest(self, added: Added) -> str:
        with self._lock:
            if added.source not in self._sources:
                index = self.state.package_dir(added.name, added.version) / "source-index.json"
                self._sources[added.source] = digest.tree(added.source, index)
            return self._sources[added.source]

    def load(self, added: Added, kernel: Kernel) -> package.Package:
        """dkms.conf for this kernel; the kept evaluation is reused unless --force."""
        return build.load_package(
            added,
            kernel,
            self.paths,
            None if self.force else self.source_digest(added),
            self.build_user,
            self.config.build_jobs,
            self.config.build_dkms_conf_timeout,
        )

    def signer(self, kernel: Kernel) -> signing.Signer | None:
        """The kernel's signer: the key is made if needed, and checked (a missing or
        passphrase-protected key is a UserError here, before any build)."""
        return self._signing(kernel)[0]

    def _signing(self, kernel: Kernel) -> tuple[signing.Signer | None, str | None]:
        """signing.signer, once per kernel per command (it runs openssl to check the key)."""
        with self._lock:
            if kernel.build_dir not in self._signers:
                self._signers[kernel.build_dir] = signing.signer(kernel, self.config, self.paths)
            return self._signers[kernel.build_dir]

    def preflight(self, what: str, kernels: Iterable[Kernel]) -> None:
        """Before a build or install writes anything: a source dir's dkms.conf is valid,
        each kernel's compiler is here and its signing key usable."""
        if Path(what).is_dir():
            self.check_add(what)
        for kernel in kernels:
            kernel.require_prepared()
            self._toolchain(kernel)

    def _toolchain(self, kernel: Kernel) -> tuple[toolchain.Resolved, signing.Signer | None]:
        with self._lock:
            key = kernel.build_dir
            if key not in self._resolved:
                self._resolved[key] = toolchain.resolve(
                    toolchain.from_kernel(kernel), kernel, memo=self._versions
                )
            return self._resolved[key], self.signer(kernel)

    def inputs(self, added: Added, kernel: Kernel, pkg: package.Package) -> str:
        resolved, sign = self._toolchain(kernel)
        return build.inputs_digest(pkg, kernel, resolved, sign, self.source_digest(added))

    def current_build(
        self, added: Added, kernel: Kernel, pkg: package.Package | None = None
    ) -> Built | None:
        """The recorded build, if its inputs are what a build now would have."""
        b = self.state.find_built(added.name, added.version, kernel.release, kernel.arch)
        if b is None or b.record.kernel_identity != kernel.identity():
            return None
        pkg = pkg or self.load(added, kernel)
        return b if b.record.inputs == self.inputs(added, kernel, pkg) else None

    # -- build ----------------------------------------------------------------------------
    def build(self, added: Added, kernel: Kernel, pkg: package.Package | None = None) -> Built:
        """Build now (the caller decided it is needed)."""
        pkg = pkg or self.load(added, kernel)
        inputs = self.inputs(added, kernel, pkg)
        self.board.phase((added.ident, kernel.release), "building")
        req = build.PackageRequest(
            added,
            kernel,
            self.echo,
            pkg,
            jobserver=self.jobserver(),
            inputs=inputs,
            versions=self._versions,
            user=self.build_user,
            other_exports=self._dependency_exports(pkg, kernel),
            signing=self._signing(kernel),
        )
        marker = self._failure_file(added, kernel)
        try:
            res = build.build_package(req, self.config, self.paths, self.state, self.say)
        except BuildError as e:
            try:
                atomic.write_json(marker, {"inputs": inputs, "error": str(e)})
            except OSError:
                pass
            raise
        except OSError as e:  # the build dir's disk is full, or it is not writable
            raise EnvError(
                f"cannot build {added.ident} for {kernel.release}: "
                f"{e.filename or 'build dir'}: {e.strerror}"
            ) from None
        marker.unlink(missing_ok=True)
        faults.point("build:published")
        for note in res.notes:
            self.say(f"note: {note}")
        self.say(f"built {added.ident} for {kernel.release} in {res.seconds:.1f}s")
        self.record(
            Outcome(added.ident, kernel.release, "built", f"{len(res.built.modules)} modules")
        )
        return res.built

    def _dependency_exports(self, pkg: package.Package, kernel: Kernel) -> frozenset[str]:
        """Symbols the modules of the package's BUILD_DEPENDS export (their builds for
        this kernel, as recorded)."""
        out: set[str] = set()
        for dep in pkg.build_depends:
            versions = self.state.versions_of(dep)
            if versions:
                b = self.state.find_built(
                    dep, newest(versions).version, kernel.release, kernel.arch
                )
                if b is not None:
                    out.update(b.record.exports)
        return frozenset(out)

    def _failure_file(self, added: Added, kernel: Kernel) -> Path:
        return (
            self.paths.build_dir(added.name, kernel.release, added.version)
            / ".extmod"
            / "failed.json"
        )

    def ensure_built(
        self,
        added: Added,
        kernel: Kernel,
        pkg: package.Package | None = None,
        retry_failed: bool = True,
    ) -> Built:
        """The current build, or a new one. ``retry_failed=False`` (autoinstall, the kernel
        hooks): a build that failed with the very same inputs is not tried again, as it
        would fail again (lttng-modules recompiling on every boot); --force retries."""
        pkg = pkg or self.load(added, kernel)
        if pkg.excluded:
            raise ExcludedError(f"{pkg.ident} is not for {kernel.release}: {pkg.excluded}")
        current = None if self.force else self.current_build(added, kernel, pkg)
        if current is not None:
            return current
        if not retry_failed and not self.force:
            try:
                failed = json.loads(self._failure_file(added, kernel).read_text())
            except (OSError, ValueError):
                failed = {}
            if failed.get("inputs") == self.inputs(added, kernel, pkg):
                raise BuildError(
                    f"{failed.get('error', 'build failed')} [not retried: "
                    f"nothing changed since; --force builds again]"
                )
        return self.build(added, kernel, pkg)

    def build_if_needed(
        self, added: Added, kernel: Kernel, pkg: package.Package | None = None
    ) -> Built:
        """The ``build`` verb: an up-to-date build is kept (--force builds anyway)."""
        with self.pair_lock(added.name, kernel.release):
            return self._build_if_needed(added, kernel, pkg)

    def pair_lock(self, name: str, kver: str) -> AbstractContextManager[None]:
        return self.state.lock(f"pair/{kver}/{name}", self.say)

    @contextmanager
    def kernel_lock(self, kver: str) -> Iterator[None]:
        """The kernel's lock, with the session's own lock; re-entrant within the session
        (an install that first uninstalls the old version takes it twice)."""
        with self._lock:
            if self._kernels_held.get(kver):
                self._kernels_held[kver] += 1
                try:
                    yield
                finally:
                    self._kernels_held[kver] -= 1
                return
            with self.state.lock(f"kernel/{kver}", self.say):
                self._kernels_held[kver] = 1
                try:
                    yield
                finally:
                    self._kernels_held[kver] = 0

    def _build_if_needed(
        self, added: Added, kernel: Kernel, pkg: package.Package | None = None
    ) -> Built:
        pkg = pkg or self.load(added, kernel)
        current = None if self.force else self.current_build(added, kernel, pkg)
        if current is not None:
            self.record(Outcome(added.ident, kernel.release, "up to date"))
            return current
        return self.ensure_built(added, kernel, pkg)

    # -- install / uninstall --------------------------------------------------------------
    def install(
        self,
        added: Added,
        kernel: Kernel,
        pkg: package.Package | None = None,
        retry_failed: bool = True,
    ) -> Installed:
        """``pkg``: the dkms.conf already evaluated for this kernel (it is read once).
        The build runs unlocked (side by side with others); the install holds the lock."""
        pkg = pkg or self.load(added, kernel)
        with self.pair_lock(added.name, kernel.release):
            built = self.ensure_built(added, kernel, pkg, retry_failed)
            with self.kernel_lock(kernel.release):
                return self._install_built(added, kernel, pkg, built)

    def _install_built(
        self, added: Added, kernel: Kernel, pkg: package.Package, built: Built
    ) -> Installed:
        withheld = self._withheld(added, kernel, built)
        existing = self.state.find_installed(kernel.release, kernel.arch, added.name)
        if existing is not None:
            same = (
                existing.version == added.version
                and existing.withheld == withheld
                and all(f.sha256 in {m.sha256 for m in built.modules} for f in existing.files)
            )
            if same and all(
                (self.paths.modules_dir / kernel.release / f.path).exists() for f in existing.files
            ):
                self.record(Outcome(added.ident, kernel.release, "up to date"))
                return existing
            self.uninstall(existing)
        self.board.phase((added.ident, kernel.release), "installing")
        if pkg.pre_install:
            self._hook(added, "PRE_INSTALL", pkg.pre_install, kernel)
        rec = install.install(self.state, self.paths, self.config, built, withheld)
        self.touched.add(kernel.release)
        for f in rec.files:
            extra = f" (original module saved: {f.original})" if f.original else ""
            self.say(f"installed {self.paths.modules_dir / kernel.release / f.path}{extra}")
        for w in rec.withheld:
            self.say(
                f"warning: {added.ident} for {kernel.release}: withheld {w} "
                f"(--force installs it anyway)"
            )
        held = f"; withheld: {'; '.join(rec.withheld)}" if rec.withheld else ""
        self.record(
            Outcome(added.ident, kernel.release, "installed", f"{len(rec.files)} modules{held}")
        )
        if pkg.post_install:
            self._hook(added, "POST_INSTALL", pkg.post_install, kernel)
        return rec

    def _withheld(self, added: Added, kernel: Kernel, built: Built) -> tuple[str, ...]:
        """The load-check problems of modules to leave out; raises LoadCheckError when the
        package is not to be installed at all (strict mode, or no module would load)."""
        problems = list(built.record.load_check)
        if not problems or self.force:
            return ()
        bad = {
            m.built_name
            for m in built.modules
            if any(p.startswith(f"{m.built_name}.ko: ") for p in problems)
        }
        placed = all(any(p.startswith(f"{b}.ko: ") for b in bad) for p in problems)
        if (
            self.config.install_load_check == "strict"
            or not placed
            or len(bad) == len(built.modules)
        ):
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise LoadCheckError(
                f"{added.ident} for {kernel.release}: {problems[0]}{more}: "
                f"not installed (--force installs it anyway)"
            )
        return tuple(problems)

    def uninstall(self, rec: Installed) -> None:
        with self.kernel_lock(rec.kver):
            self._uninstall(rec)

    def _uninstall(self, rec: Installed) -> None:
        for note in install.uninstall(self.state, self.paths, rec):
            self.say(f"warning: {note}")
            self.notes.append(note)
        self.touched.add(rec.kver)
        self.say(f"uninstalled {rec.name}/{rec.version} from {rec.kver}")
        self.record(Outcome(f"{rec.name}/{rec.version}", rec.kver, "uninstalled"))

    def uninstall_package(self, added: Added, kvers: Iterable[str] | None) -> None:
        """One record read per kernel, whatever else is installed."""
        for rec in self.state.installs_of(added.name, kvers):
            if rec.version == added.version:
                with self.pair_lock(rec.name, rec.kver):
                    self.uninstall(rec)

    def unbuild(self, added: Added, kvers: Iterable[str] | None) -> None:
        self.uninstall_package(added, kvers)
        for b in self.state.builds(added.name, added.version):
            if kvers is None or b.kver in kvers:
                with self.pair_lock(added.name, b.kver):
                    self.state.drop_built(added.name, added.version, b.kver, b.arch)
                shutil.rmtree(
                    self.paths.build_dir(added.name, b.kver, added.version), ignore_errors=True
                )
                self.record(Outcome(added.ident, b.kver, "unbuilt"))

    def remove(self, added: Added, kvers: Iterable[str] | None) -> None:
        """Uninstall and unbuild for the kernels; unregister once no build is left."""
        self.unbuild(added, kvers)
        faults.point("remove:unbuilt")
        with self.state.lock("packages", self.say):
            self._unregister(added)

    def _unregister(self, added: Added) -> None:
        if (
            self.state.builds(added.name, added.version)
            or self.state.find_added(added.name, added.version) is None
        ):
            return
        conf = added.source / "dkms.conf"
        post_remove = ""
        if conf.is_file() and self._mentions(conf, "POST_REMOVE"):
            post_remove = (
                package.evaluate(conf, None, self._ctx(), added.name, added.version)
                .get("POST_REMOVE", {})
                .get(0, "")
            )
        if post_remove:
            self._hook(added, "POST_REMOVE", post_remove, None)
        self.state.drop_added(added.name, added.version)
        build_root = self.paths.state_dir / "build" / added.name / added.version
        shutil.rmtree(build_root, ignore_errors=True)
        if build_root.parent.is_dir() and not any(build_root.parent.iterdir()):
            build_root.parent.rmdir()
        self.say(f"removed {added.ident}")
        self.record(Outcome(added.ident, "", "removed"))

    def _mentions(self, conf: Path, word: str) -> bool:
        """Whether dkms.conf or an /etc/dkms file names ``word`` at all: a bash run per
        package is what made removing hundreds of packages slow."""
        files = [conf]
        if self.paths.etc_dkms.is_dir():
            files += [f for f in self.paths.etc_dkms.iterdir() if f.is_file()]
        for f in files:
            try:
                if word.encode() in f.read_bytes():
                    return True
            except OSError:
                return True
        return False

    # -- several pairs at once ----------------------------------------------------------
    def run_pairs(
        self,
        pairs: list[tuple[Added, Kernel, package.Package | None]],
        action: Callable[[Added, Kernel, package.Package | None], object],
        depends: Callable[[Added, package.Package | None], Iterable[str]] = lambda a, p: (),
    ) -> None:
        """``action`` on each (package, kernel) as one graph under the job budget; a pair
        waits for the pairs of the same kernel it depends on. Failures are recorded, and
        the others go on."""
        jobs = []
        for added, kernel, pkg in pairs:

            def work(
                a: Added = added, k: Kernel = kernel, p: package.Package | None = pkg
            ) -> object:
                with self.job(a, k):
                    return action(a, k, p)

            self.board.expect((added.ident, kernel.release))
            after = tuple((d, kernel.release) for d in depends(added, pkg))
            jobs.append(
                schedule.Job((added.name, kernel.release), work, after, weight=self._weight(added))
            )
        results = schedule.run_all(jobs, self.jobserver())
        for added, kernel, _ in pairs:
            r = results[(added.name, kernel.release)]
            if isinstance(r, schedule.DependencyFailed):
                names = " ".join(str(k[0]) for k in r.failed)  # type: ignore[index]
                self.failed(
                    added.ident,
                    kernel.release,
                    BuildError(f"BUILD_DEPENDS {names} did not install"),
                )
            elif isinstance(r, ExcludedError):
                self.record(Outcome(added.ident, kernel.release, "skipped", str(r)))
            elif isinstance(r, ExtmodError):
                self.failed(added.ident, kernel.release, r)
            elif isinstance(r, BaseException):
                raise r

    # -- autoinstall ----------------------------------------------------------------------
    def autoinstall(self, kernels: list[Kernel]) -> None:
        """Every added package with AUTOINSTALL (its newest version) onto each kernel, all
        in one graph: BUILD_DEPENDS first, the rest side by side; a failure is reported
        and the others go on."""
        by_name: dict[str, list[Added]] = {}
        for a in self.state.all_added():
            by_name.setdefault(a.name, []).append(a)
        pairs: list[tuple[Added, Kernel, package.Package | None]] = []
        if by_name:
            for kernel in kernels:
                self.signer(kernel)  # a bad signing key stops everything, before any build
        for kernel in kernels:
            for versions in by_name.values():
                added = newest(versions)
                try:
                    pkg = self.load(added, kernel)
                except ExtmodError as e:
                    self.failed(added.ident, kernel.release, e)
                    continue
                if not pkg.autoinstall:
                    continue
                if pkg.excluded:
                    self.say(f"skipped {added.ident} for {kernel.release}: {pkg.excluded}")
                    self.record(Outcome(added.ident, kernel.release, "skipped", pkg.excluded))
                    continue
                pairs.append((added, kernel, pkg))
        self.run_pairs(
            pairs,
            lambda a, k, p: self.install(a, k, p, retry_failed=False),
            lambda a, p: [d for d in (p.build_depends if p else ()) if d in by_name],
        )

    def failed(self, ident: str, kver: str, e: ExtmodError) -> None:
        self.say(f"extmod: error: {e}")
        self.record(Outcome(ident, kver, "failed", str(e), e.exit_code))

    # -- the start and the end of a command ----------------------------------------------
    def recover(self) -> None:
        """Finish or roll back what an earlier, interrupted extmod left in a journal."""
        for kver in sorted({k for k, _ in self.state.journals()}):
            with self.kernel_lock(kver):
                for note in install.recover(self.state, self.paths, kver):
                    self.note(note)
                    self.touched.add(kver)

    def finish(self) -> list[str]:
        """depmod once for each kernel whose module tree changed (in this command, or in
        one that was interrupted before its depmod). Returns those kernels."""
        done: list[str] = []
        if self._jobserver is not None:
            self._jobserver.close()
            self._jobserver = None
        self._versions.save()
        faults.point("depmod:before")
        if not self.depmod:
            self.touched.clear()
            return done
        for kver in sorted(self.touched | set(self.state.kernels_needing_depmod())):
            with self.kernel_lock(kver):
                if (self.paths.modules_dir / kver).is_dir():
                    modtree.depmod(self.paths, kver)
                    done.append(kver)
                self.state.clear_journal(self.state.depmod_marker(kver))
        self.touched.clear()
        return done

    def _hook(self, added: Added, kind: str, script: str, kernel: Kernel | None) -> None:
        ctx = build.context_of(
            self.paths,
            self.paths.dkms_tree(added.name, added.version, kernel.release if kernel else None),
            jobs=self.config.build_jobs,
            timeout=self.config.build_dkms_conf_timeout,
        )
        values = package.shell_vars(
            build.target_of(kernel) if kernel else None, ctx, added.name, added.version
        )
        log = self.state.package_dir(added.name, added.version) / "hooks.log"
        with open(log, "a") as f:
            f.write(f"# {kind}: {script}\n")
        try:
            # PRE/POST_INSTALL belong to the install step (root); the others are the
            # package's own scripts and run as the build user, if there is one.
            user = None if kind.endswith("_INSTALL") else self.build_user
            run.run_logged(
                package.script_argv(values, added.source, script),
                log=log,
                cwd=added.source,
                echo=self.echo,
                user=user,
            )
        except run.CommandFailed as e:
            raise BuildError(
                f"{kind} script of {added.ident} failed with exit {e.returncode} (log: {log})"
            ) from None


def _dangling(directory: str, names: list[str]) -> list[str]:
    """Symlinks that lead nowhere (checked from their own dir: shutil's
    ignore_dangling_symlinks tests a relative target against the cwd instead)."""
    return [
        n
        for n in names
        if os.path.islink(os.path.join(directory, n))
        and not os.path.exists(os.path.join(directory, n))
    ]


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

    def line(self) -> str:
        if not self.kver:
            return f"{self.name}/{self.version}: added"
        extra = " (original module saved)" if self.original_saved else ""
        for w in self.withheld:
            extra += f" (withheld {w})"
        if self.interrupted == "install":
            extra += " (an install was interrupted: the next extmod command rolls it back)"
        elif self.interrupted:
            extra += " (an uninstall was interrupted: the next extmod command finishes it)"
        return f"{self.name}/{self.version}, {self.kver}, {self.arch}: {self.state}{extra}"


def status(state: State, spec: str | None, kver: str | None) -> list[StatusRow]:
    name, version = parse_spec(spec) if spec else (None, None)
    installs = {(r.name, r.version, r.kver, r.arch): r for r in state.all_installed(kver)}
    pending: dict[tuple[str, str, str, str], str] = {}
    for k, journal in state.journals(kver):
        try:
            data = json.loads(journal.read_text())
            rec = data["record"]
            pending[(rec["name"], rec["version"], k, rec["arch"])] = data["op"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    rows: list[StatusRow] = []
    for a in state.all_added():
        if (name and a.name != name) or (version and a.version != version):
            continue
        kernels = {
            (b.kver, b.arch)
            for b in state.builds(a.name, a.version)
            if kver is None or b.kver == kver
        }
        kernels |= {(k, ar) for (n, v, k, ar) in installs if (n, v) == (a.name, a.version)}
        for k, ar in sorted(kernels):
            rec = installs.get((a.name, a.version, k, ar))
            op = pending.get((a.name, a.version, k, ar), "")
            if rec is None:
                rows.append(StatusRow(a.name, a.version, k, ar, "built", False, (), op))
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
                    )
                )
        if not kernels and kver is None:
            rows.append(StatusRow(a.name, a.version, "", "", "added", False, ()))
    return rows


def running_release() -> str:
    return os.uname().release
