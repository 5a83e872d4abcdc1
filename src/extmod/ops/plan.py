"""Several (package, kernel) pairs as one graph under the command's job budget
(``schedule``): the builds run side by side in threads, sharing the jobserver with their
makes; a pair waits for the pairs of the same kernel it depends on (BUILD_DEPENDS). A
failure is recorded and the others go on. ``autoinstall`` is the kernel hooks' plan."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from extmod.builder import schedule
from extmod.core.errors import BuildError, ExcludedError, ExtmodError
from extmod.kernel import finish, toolchain
from extmod.kernel.kernel import Kernel
from extmod.ops import installer, registry
from extmod.ops.session import Outcome, Session
from extmod.source import package
from extmod.store import status
from extmod.store.state import Added, newest

Pair = tuple[Added, Kernel, package.Package | None]


def check_ready(s: Session, what: str, kernels: Iterable[Kernel]) -> None:
    """Before a build or install writes anything: a source dir's dkms.conf is valid, each
    kernel's compiler and module compressor are here and its signing key usable."""
    if Path(what).is_dir():
        registry.check_add(s, what)
    toolchain.configured_launcher(s.config, s.paths)
    for kernel in kernels:
        kernel.require_prepared()
        s.facts.toolchain(kernel)
        s.facts.signer(kernel)
        finish.compression(kernel)  # its compressor is here


def run_pairs(
    s: Session,
    pairs: list[Pair],
    action: Callable[[Added, Kernel, package.Package | None], object],
    depends: Callable[[Added, package.Package | None], Iterable[str]] = lambda a, p: (),
) -> None:
    """``action`` on each (package, kernel) as one graph under the job budget."""
    jobs = []
    for added, kernel, pkg in pairs:

        def work(a: Added = added, k: Kernel = kernel, p: package.Package | None = pkg) -> object:
            with s.job(a, k):
                return action(a, k, p)

        s.board.expect((added.ident, kernel.release))
        after = tuple((d, kernel.release) for d in depends(added, pkg))
        jobs.append(
            schedule.Job((added.name, kernel.release), work, after, weight=s.facts.weight(added))
        )
    results = schedule.run_all(jobs, s.jobserver())
    for added, kernel, _ in pairs:
        r = results[(added.name, kernel.release)]
        if isinstance(r, schedule.DependencyFailed):
            names = " ".join(str(k[0]) for k in r.failed)  # type: ignore[index]
            s.failed(
                added.ident, kernel.release, BuildError(f"BUILD_DEPENDS {names} did not install")
            )
        elif isinstance(r, ExcludedError):
            s.record(Outcome(added.ident, kernel.release, "skipped", str(r)))
        elif isinstance(r, ExtmodError):
            s.failed(added.ident, kernel.release, r)
        elif isinstance(r, BaseException):
            raise r


def autoinstall(
    s: Session,
    kernels: list[Kernel],
    action: Callable[[Added, Kernel, package.Package | None], object] | None = None,
) -> list[Pair]:
    """Every added package with AUTOINSTALL (its newest version) onto each kernel, all in
    one graph: BUILD_DEPENDS first, the rest side by side; a failure is reported and the
    others go on. A build that failed with the same inputs is not tried again.
    ``action``: what is done to each pair instead of installing it (preflight builds
    only); the pairs are returned."""
    by_name: dict[str, list[Added]] = {}
    for a in s.state.all_added():
        by_name.setdefault(a.name, []).append(a)
    if by_name:
        for kernel in kernels:
            s.facts.signer(kernel)  # a bad signing key stops everything, before any build
    pairs = [p for kernel in kernels for p in autoinstall_pairs(s, kernel, by_name)]
    run_pairs(
        s,
        pairs,
        action or (lambda a, k, p: installer.install_pair(s, a, k, p, retry_failed=False)),
        lambda a, p: [d for d in (p.build_depends if p else ()) if d in by_name],
    )
    return pairs


def dependants(s: Session, name: str, kernels: list[Kernel]) -> None:
    """After ``name`` was installed onto ``kernels``: every AUTOINSTALL package that
    BUILD_DEPENDS on it (its newest version), onto those kernels, in one graph. What
    autoinstall deferred for want of ``name`` is installed now (DKMS 3.4.1 leaves it to
    "the next trigger")."""
    by_name: dict[str, list[Added]] = {}
    for a in s.state.all_added():
        by_name.setdefault(a.name, []).append(a)
    pairs: list[Pair] = []
    for kernel in kernels:
        if s.state.find_installed(kernel.release, kernel.arch, name) is None:
            continue
        for versions in by_name.values():
            added = newest(versions)
            if added.name == name:
                continue
            try:
                pkg = s.facts.load(added, kernel)
            except ExtmodError:
                continue  # named when it is itself installed, not here
            if pkg.autoinstall and name in pkg.build_depends and not pkg.excluded:
                pairs.append((added, kernel, pkg))
    run_pairs(
        s,
        pairs,
        lambda a, k, p: installer.install_pair(s, a, k, p, retry_failed=False),
        lambda a, p: [d for d in (p.build_depends if p else ()) if d in by_name and d != name],
    )


def autoinstall_pairs(s: Session, kernel: Kernel, by_name: dict[str, list[Added]]) -> list[Pair]:
    from_packages = {
        str(r["name"]): str(r["package"])
        for r in status.prebuilt(s.paths.root)
        if r["kernel"] == kernel.release
    }
    pairs: list[Pair] = []
    for versions in by_name.values():
        added = newest(versions)
        if added.name in from_packages:  # a package extmod export made has its modules
            why = f"installed from package {from_packages[added.name]}"
            s.record(Outcome(added.ident, kernel.release, "skipped", why))
            continue
        try:
            pkg = s.facts.load(added, kernel)
        except ExtmodError as e:
            s.failed(added.ident, kernel.release, e)
            continue
        if not pkg.autoinstall:
            continue
        unregistered = [d for d in pkg.build_depends if d not in by_name]
        if unregistered:
            # DKMS 3.4.1: a BUILD_DEPENDS not registered at all is a package not yet
            # configured in this apt run (or provided from outside): deferred, not failed;
            # its own postinst builds this one after it (``dependants``)
            why = f"BUILD_DEPENDS not registered: {' '.join(unregistered)}"
            s.say(f"deferred {added.ident} for {kernel.release}: {why}")
            s.record(Outcome(added.ident, kernel.release, "deferred", why))
            continue
        if pkg.excluded:
            s.say(f"skipped {added.ident} for {kernel.release}: {pkg.excluded}")
            s.record(Outcome(added.ident, kernel.release, "skipped", pkg.excluded))
            continue
        pairs.append((added, kernel, pkg))
    return pairs
