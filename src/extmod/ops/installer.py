"""Install, uninstall and unbuild over a session: one kernel's module tree changes under
its lock, one pair at a time; the kernels touched get their depmod once, at ``run_depmod``.
The files themselves move through ``install`` (journaled), where they go is ``modtree``'s."""

from __future__ import annotations

import glob
import shutil
from collections.abc import Iterable

from extmod.core import faults
from extmod.core.errors import ExcludedError, ExtmodError, KernelError, LoadCheckError, UserError
from extmod.deploy import journaled
from extmod.kernel import kernel, modtree
from extmod.kernel.kernel import Kernel
from extmod.ops import caches, freshness, registry
from extmod.ops.session import Outcome, Session
from extmod.source import package
from extmod.store import status
from extmod.store.state import Added, Built, Installed, by_module, parse_spec


def install_pair(
    s: Session,
    added: Added,
    kernel: Kernel,
    pkg: package.Package | None = None,
    retry_failed: bool = True,
) -> Installed:
    """``pkg``: the dkms.conf already evaluated for this kernel (it is read once).
    The build runs unlocked (side by side with others); the install holds the lock."""
    pkg = pkg or s.facts.load(added, kernel)
    with s.pair_lock(added.name, kernel.release):
        if s.state.find_added(added.name, added.version) is None:  # a remove beside us
            raise ExcludedError(f"{added.ident} was removed while this command ran")
        built = freshness.ensure_built(s, added, kernel, pkg, retry_failed)
        with s.kernel_lock(kernel.release):
            return _install_built(s, added, kernel, pkg, built)


def _up_to_date(
    s: Session, existing: Installed, added: Added, built: Built, held: tuple[str, ...]
) -> bool:
    same = (
        existing.version == added.version
        and existing.withheld == held
        and all(f.sha256 in {m.sha256 for m in built.modules} for f in existing.files)
    )
    tree = s.paths.modules_dir / existing.kver
    return same and all((tree / f.path).exists() for f in existing.files)


def _install_built(
    s: Session, added: Added, kernel: Kernel, pkg: package.Package, built: Built
) -> Installed:
    held = withheld(s, added, kernel, built)
    existing = s.state.find_installed(kernel.release, kernel.arch, added.name)
    staged = None
    if existing is not None:
        if _up_to_date(s, existing, added, built, held):
            s.record(Outcome(added.ident, kernel.release, "up to date"))
            return existing
        # the new modules are on the module tree's disk before the old ones go: a full
        # disk or a failing PRE_INSTALL leaves the installed version as it was
        staged = journaled.stage(s.state, s.paths, s.config, built, held, existing.version)
    s.board.phase((added.ident, kernel.release), "installing")
    try:
        if pkg.pre_install:
            registry.run_script(s, added, "PRE_INSTALL", pkg.pre_install, kernel)
        if existing is not None:
            uninstall(s, existing)
    except BaseException:
        journaled.unstage(s.state, s.paths, kernel.release, added.name)
        raise
    rec = journaled.install(s.state, s.paths, s.config, built, held, staged)
    s.touched.add(kernel.release)
    for f in rec.files:
        extra = f" (original module saved: {f.original})" if f.original else ""
        s.say(f"installed {s.paths.modules_dir / kernel.release / f.path}{extra}")
    for module, why in by_module(rec.withheld).items():
        # one line per module, with every reason (issue 22: one line per symbol)
        s.say(
            f"warning: {added.ident} for {kernel.release}: withheld {module}: "
            f"{'; '.join(why)} (--force installs it anyway)"
        )
    held_lines = [f"{m}: {'; '.join(why)}" for m, why in by_module(rec.withheld).items()]
    note = f"; withheld: {'; '.join(held_lines)}" if held_lines else ""
    s.record(Outcome(added.ident, kernel.release, "installed", f"{len(rec.files)} modules{note}"))
    if pkg.post_install:
        registry.run_script(s, added, "POST_INSTALL", pkg.post_install, kernel)
    return rec


def withheld(s: Session, added: Added, kernel: Kernel, built: Built) -> tuple[str, ...]:
    """The load-check problems of modules to leave out; raises LoadCheckError when the
    package is not to be installed at all (strict mode, or no module would load)."""
    problems = list(built.record.load_check)
    if not problems or s.force:
        return ()
    bad = {
        m.built_name
        for m in built.modules
        if any(p.startswith(f"{m.built_name}.ko: ") for p in problems)
    }
    placed = all(any(p.startswith(f"{b}.ko: ") for b in bad) for p in problems)
    if s.config.install_load_check == "strict" or not placed or len(bad) == len(built.modules):
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LoadCheckError(
            f"{added.ident} for {kernel.release}: {problems[0]}{more}: "
            f"not installed (--force installs it anyway)"
        )
    return tuple(problems)


def uninstall(s: Session, rec: Installed) -> None:
    """The install taken out of its kernel; then the package's POST_REMOVE, as DKMS runs
    it after each uninstall (an install of a package no longer added has none)."""
    with s.kernel_lock(rec.kver):
        for note in journaled.uninstall(s.state, s.paths, rec):
            s.say(f"warning: {note}")
            s.notes.append(note)
        s.touched.add(rec.kver)
        s.say(f"uninstalled {rec.name}/{rec.version} from {rec.kver}")
        s.record(Outcome(f"{rec.name}/{rec.version}", rec.kver, "uninstalled"))
    added = s.state.find_added(rec.name, rec.version)
    if added is not None:
        registry.post_remove(s, added, rec.kver, rec.arch)


def uninstall_package(s: Session, added: Added, kvers: Iterable[str] | None) -> None:
    """One record read per kernel, whatever else is installed."""
    for rec in s.state.installs_of(added.name, kvers):
        if rec.version == added.version:
            with s.pair_lock(rec.name, rec.kver):
                uninstall(s, rec)


def unbuild(s: Session, added: Added, kvers: Iterable[str] | None) -> None:
    # The build records are read (and a damaged one refused) before anything is
    # uninstalled (issue 22: a damaged build.json failed the unbuild after its uninstall).
    kvers = None if kvers is None else list(kvers)
    builds = s.state.builds(added.name, added.version)
    uninstall_package(s, added, kvers)
    for b in builds:
        if kvers is None or b.kver in kvers:
            with s.pair_lock(added.name, b.kver):
                s.state.drop_built(added.name, added.version, b.kver, b.arch)
            shutil.rmtree(s.paths.work_dir(added.name, added.version, b.kver), ignore_errors=True)
            s.record(Outcome(added.ident, b.kver, "unbuilt"))


def prepare_kernel(s: Session, kver: str) -> None:
    """A kernel package about to be installed or upgraded (its preinst hook; dkms 3.1.6
    ``kernel_preinst``): every AUTOINSTALL package built for that release is uninstalled and
    unbuilt, so that no module built for the image being replaced stays installed under the
    new one; the kernel's postinst builds them again. On a first install nothing is built
    for the release and nothing happens. A package whose dkms.conf cannot be read for the
    kernel (its headers are gone) is kept and named."""
    built = [
        a
        for a in s.state.all_added()
        if any(b.kver == kver for b in s.state.builds(a.name, a.version))
    ]
    if not built:
        return
    try:
        k: Kernel | None = kernel.by_release(s.paths, kver)
    except KernelError as e:
        k = None
        why = str(e)
    for added in built:
        if k is None:
            s.note(f"{added.ident} for {kver}: kept (cannot read its dkms.conf: {why})")
            continue
        try:
            pkg = s.facts.load(added, k)
        except ExtmodError as e:
            s.failed(added.ident, kver, e)
            continue
        if pkg.autoinstall:
            s.say(f"removing {added.ident} from {kver} before the kernel package changes")
            unbuild(s, added, [kver])


def forget_kernel(s: Session, kver: str) -> None:
    """A kernel about to go (its prerm hook): every package uninstalled and unbuilt for it,
    and everything else extmod kept for it dropped: build dirs of any package (a failed
    build's too, with its remembered failure; bare kbuild dirs' too), and the records of
    extmod verify (issue 22: a removed kernel left its build dirs and a doctor warning
    naming it)."""
    for added in s.state.all_added():
        unbuild(s, added, [kver])
    builds = s.paths.builds_root
    for d in sorted(builds.glob(f"*/*/{glob.escape(kver)}")) if builds.is_dir() else []:
        with s.pair_lock(d.parent.parent.name, kver):
            shutil.rmtree(d, ignore_errors=True)
        for parent in (d.parent, d.parent.parent):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
    shutil.rmtree(s.state.verify_dir(kver), ignore_errors=True)


def remove(s: Session, added: Added, kvers: Iterable[str] | None) -> None:
    """Uninstall and unbuild for the kernels; unregister once no build is left. Then what
    a command beside this one (an autoinstall, a hook) built or installed of it meanwhile
    goes too: such a command checks the registration under the pair's lock before it
    builds, so once each pair's lock has been had after the unregister, nothing more
    comes (issue 32: an autoinstall beside a remove left an install of no package)."""
    unbuild(s, added, kvers)
    faults.point("remove:unbuilt")
    registry.unregister(s, added)
    if s.state.find_added(added.name, added.version) is not None:
        return
    kernels = (
        {d.name for d in s.paths.kernels_dir.iterdir()} if s.paths.kernels_dir.is_dir() else set()
    )
    for kver in sorted(kernels | {r.kver for r in s.state.installs_of(added.name)}):
        with s.pair_lock(added.name, kver):
            pass  # a command building or installing this pair beside us is done now
    late = {b.kver for b in s.state.builds(added.name, added.version)} | {
        r.kver for r in s.state.installs_of(added.name) if r.version == added.version
    }
    if late:
        unbuild(s, added, sorted(late))
    registry.drop_unregistered(s, added)


def take_out(s: Session, verb: str, targets: list[str], kvers: list[str] | None) -> None:
    """``uninstall``, ``unbuild`` or ``remove`` of each target (NAME, NAME/VERSION or a
    source dir) for the kernels (None: all). An install whose package is not added any
    more (its registration deleted or damaged by hand: ``status`` names it) is uninstalled
    by ``uninstall`` and ``remove`` from its install record alone."""
    step = {"uninstall": uninstall_package, "unbuild": unbuild, "remove": remove}[verb]
    selected: list[Added] = []
    for t in targets:
        try:
            selected += s.state.select(t)
        except UserError:
            left = _orphans_of(s, t, kvers) if verb != "unbuild" else []
            if not left:
                raise
            for rec in left:
                with s.pair_lock(rec.name, rec.kver):
                    uninstall(s, rec)
    for added in dict.fromkeys(selected):
        step(s, added, kvers)


def _orphans_of(s: Session, spec: str, kvers: list[str] | None) -> list[Installed]:
    if spec.startswith("/"):
        return []
    name, version = parse_spec(spec)
    return [
        r
        for r in status.orphans(s.state)
        if r.name == name
        and (version is None or r.version == version)
        and (kvers is None or r.kver in kvers)
    ]


def recover(s: Session) -> None:
    """Finish or roll back what an earlier, interrupted extmod left in a journal."""
    for kver in sorted({k for k, _ in s.state.journals()}):
        with s.kernel_lock(kver):
            for note in journaled.recover(s.state, s.paths, kver):
                s.note(note)
                s.touched.add(kver)


def run_depmod(s: Session) -> list[str]:
    """depmod once for each kernel whose module tree changed (in this command, or in one
    that was interrupted before its depmod). Returns those kernels."""
    done: list[str] = []
    s.close()
    if any(o.action == "built" for o in s.outcomes):
        caches.prune_kept(s.config, s.paths)  # the kept build dirs' bound
        caches.prune_store(s.config, s.paths)  # the build store's
    faults.point("depmod:before")
    if not s.depmod:
        s.touched.clear()
        return done
    for kver in sorted(s.touched | set(s.state.kernels_needing_depmod())):
        with s.kernel_lock(kver):
            if (s.paths.modules_dir / kver).is_dir():
                modtree.depmod(s.paths, kver)
                done.append(kver)
            s.state.clear_journal(s.state.depmod_marker(kver))
    s.touched.clear()
    return done
