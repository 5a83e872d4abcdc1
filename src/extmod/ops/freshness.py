"""Whether a (package, kernel) needs a build, and the build when it does.

A recorded build is current while its inputs digest (``facts.Facts.inputs``: the source
tree, dkms.conf as read for the kernel, the kernel's identity, the toolchain, the signer,
extmod's version) and the kernel's identity are what a build now would have. A failed
build leaves its inputs beside it (``failed.json``): the kernel hooks do not try the very
same build again, as it would fail again; --force does."""

from __future__ import annotations

from pathlib import Path

from extmod.builder import build
from extmod.core import faults
from extmod.core.errors import BuildError, EnvError, ExcludedError, MakeFailed
from extmod.kernel.kernel import Kernel
from extmod.ops.session import Outcome, Session
from extmod.source import package
from extmod.store import builds, failures
from extmod.store.state import Added, Built, newest


def current_build(
    s: Session, added: Added, kernel: Kernel, pkg: package.Package | None = None
) -> Built | None:
    """The recorded build, if its inputs are what a build now would have."""
    b = s.state.find_built(added.name, added.version, kernel.release, kernel.arch)
    if b is None or b.record.kernel_identity != kernel.identity():
        return None
    pkg = pkg or s.facts.load(added, kernel)
    return b if b.record.inputs == s.facts.inputs(added, kernel, pkg) else None


def remembered_failure(
    s: Session, added: Added, kernel: Kernel, pkg: package.Package
) -> failures.Failure | None:
    """The failed build with the very inputs a build now would have, if any."""
    failed = failures.find(s.paths, added.name, added.version, kernel.release)
    if failed is None or failed.inputs != s.facts.inputs(added, kernel, pkg):
        return None
    return failed


def build_now(s: Session, added: Added, kernel: Kernel, pkg: package.Package) -> Built:
    """Build now (the caller decided it is needed); a failure is remembered. A PATCH that
    cannot be applied refuses the build before anything of it is made."""
    if pkg.bad_patch is not None:
        raise pkg.bad_patch.error()
    inputs = s.facts.inputs(added, kernel, pkg)
    s.board.phase((added.ident, kernel.release), "building")
    req = build.PackageRequest(
        added,
        kernel,
        s.echo,
        pkg,
        jobserver=s.jobserver(),
        inputs=inputs,
        versions=s.facts.versions,
        user=s.build_user,
        other_exports=dependency_exports(s, pkg, kernel),
        signing=s.facts.signing(kernel),
        stores=s.stores,
    )
    # --force asks for a compile: the stores are passed over
    stored = None if s.force else s.stores.lookup(inputs, s.note)
    if stored is not None:
        return _from_store(s, req, stored)
    try:
        res = build.build_package(req, s.config, s.paths, s.state, s.say)
    except BuildError as e:
        made = (e.status, e.make, str(e.log)) if isinstance(e, MakeFailed) else (0, "", "")
        failures.remember(
            s.paths,
            failures.Failure(added.name, added.version, kernel.release, inputs, str(e), *made),
        )
        raise
    except OSError as e:  # the build dir's disk is full, or it is not writable
        raise EnvError(
            f"cannot build {added.ident} for {kernel.release}: "
            f"{e.filename or 'build dir'}: {e.strerror}"
        ) from None
    failures.forget(s.paths, added.name, added.version, kernel.release)
    assert res.built is not None  # a package build is recorded
    faults.point("build:published")
    for note in res.notes:
        s.say(f"note: {note}")
    s.say(f"built {added.ident} for {kernel.release} in {res.seconds:.1f}s")
    s.record(Outcome(added.ident, kernel.release, "built", f"{len(res.built.modules)} modules"))
    return res.built


def _from_store(s: Session, req: build.PackageRequest, stored: builds.Stored) -> Built:
    """The pair's build taken from the build store: the same inputs were built before."""
    added, kernel = req.added, req.kernel
    res = build.from_store(req, stored, s.config, s.paths, s.state)
    assert res.built is not None
    failures.forget(s.paths, added.name, added.version, kernel.release)
    for note in res.notes:
        s.say(f"note: {note}")
    s.say(f"{added.ident} for {kernel.release}: from the build store ({stored.digest[:16]})")
    detail = f"{len(res.built.modules)} modules, from the store {stored.digest[:16]}"
    s.record(Outcome(added.ident, kernel.release, "built", detail))
    return res.built


def dependency_exports(s: Session, pkg: package.Package, kernel: Kernel) -> frozenset[str]:
    """Symbols the modules of the package's BUILD_DEPENDS export (their builds for this
    kernel, as recorded)."""
    out: set[str] = set()
    for dep in pkg.build_depends:
        versions = s.state.versions_of(dep)
        if versions:
            b = s.state.find_built(dep, newest(versions).version, kernel.release, kernel.arch)
            if b is not None:
                out.update(b.record.exports)
    return frozenset(out)


def ensure_built(
    s: Session,
    added: Added,
    kernel: Kernel,
    pkg: package.Package | None = None,
    retry_failed: bool = True,
) -> Built:
    """The current build, or a new one. ``retry_failed=False`` (autoinstall, the kernel
    hooks): a build that failed with the very same inputs is not tried again, as it would
    fail again (lttng-modules recompiling on every boot); --force retries."""
    pkg = pkg or s.facts.load(added, kernel)
    if pkg.excluded:
        raise ExcludedError(f"{pkg.ident} is not for {kernel.release}: {pkg.excluded}")
    current = None if s.force else current_build(s, added, kernel, pkg)
    if current is not None:
        return current
    if not retry_failed and not s.force:
        failed = remembered_failure(s, added, kernel, pkg)
        if failed is not None:
            why = f"{failed.error} [not retried: nothing changed since; --force builds again]"
            if failed.status:  # the make that failed, as it failed
                raise MakeFailed(why, failed.status, failed.make, Path(failed.log))
            raise BuildError(why)
    return build_now(s, added, kernel, pkg)


def build_if_needed(
    s: Session, added: Added, kernel: Kernel, pkg: package.Package | None = None
) -> Built:
    """The ``build`` verb: an up-to-date build is kept (--force builds anyway)."""
    with s.pair_lock(added.name, kernel.release):
        pkg = pkg or s.facts.load(added, kernel)
        current = None if s.force else current_build(s, added, kernel, pkg)
        if current is not None:
            s.record(Outcome(added.ident, kernel.release, "up to date"))
            return current
        return ensure_built(s, added, kernel, pkg)
