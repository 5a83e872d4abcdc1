"""One command's session over the state tree: what the DKMS verbs share while they run.

The verbs themselves live in rooms of their own, each a set of plain functions over a
``Session``:
- ``registry``: add and remove (with POST_ADD/POST_REMOVE), resolve a NAME[/VERSION];
- ``freshness``: is the recorded build current, the remembered failure, build now;
- ``installer``: install, uninstall, unbuild, the journal's recovery and depmod at the end;
- ``plan``: several (package, kernel) pairs as one graph under the job budget, autoinstall.
``facts.Facts`` holds what they look up once per command (toolchain, signer, digests).

The session remembers which kernels' module trees changed, so depmod runs once for each
at the end (``installer.run_depmod``), not once per module.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from extmod.builder import reuse, schedule
from extmod.core import progress, run
from extmod.core.config import Config
from extmod.core.errors import ExcludedError, ExtmodError, UserError
from extmod.core.paths import Paths
from extmod.kernel import toolchain
from extmod.kernel.kernel import Kernel
from extmod.ops import facts
from extmod.store.state import Added, State

__all__ = ["Added", "Outcome", "Session", "running_release"]

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
    # Told each package script that ran (POST_ADD, PRE_INSTALL, POST_INSTALL, POST_REMOVE)
    # and its output, as the dkms command shows them; None: only hooks.log has them.
    scripts_shown: Callable[[str, str], None] | None = None
    state: State = field(init=False)
    facts: facts.Facts = field(init=False)
    touched: set[str] = field(default_factory=set)  # kernels whose module tree changed
    outcomes: list[Outcome] = field(default_factory=list)
    done: set[str] = field(default_factory=set)  # every outcome's action, never cleared
    errors: dict[tuple[str, str], ExtmodError] = field(default_factory=dict)  # (ident, kver)
    # Asked of each failure before its "extmod: error:" line; True: the front says it in
    # words of its own (the dkms command, a failed make as DKMS says it).
    failure_shown: Callable[[ExtmodError], bool] | None = None
    notes: list[str] = field(default_factory=list)
    build_user: run.RunAs | None = field(init=False, default=None)
    stores: reuse.Stores = field(init=False)  # the build stores, as this command uses them
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _jobserver: schedule.Jobserver | None = None
    _kernels_held: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = State(self.paths)
        if self.config.build_user:
            if os.geteuid() != 0:
                raise UserError(
                    "build.user: only root builds as another user (you already build as yourself)"
                )
            self.build_user = run.RunAs.lookup(self.config.build_user)
        self.facts = facts.Facts(self.config, self.paths, self.state, self.build_user, self.force)
        self.stores = reuse.Stores.of(self.config, self.paths)

    def note(self, text: str) -> None:
        """Something a person should know that is not a failure (also in --json "notes")."""
        self.say(f"note: {text}")
        self.notes.append(text)

    def record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)
            self.done.add(outcome.action)

    def failed(self, ident: str, kver: str, e: ExtmodError) -> None:
        self.errors[(ident, kver)] = e
        if self.failure_shown is None or not self.failure_shown(e):
            self.say(f"extmod: error: {e}")
        self.record(Outcome(ident, kver, "failed", str(e), e.exit_code))

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
        """The command's job budget (-j, build.jobs; default the number of CPUs, or the
        remote slots of a distributing launcher when there are more)."""
        with self._lock:
            if self._jobserver is None:
                launch = toolchain.configured_launcher(self.config, self.paths)
                slots = toolchain.job_slots(self.config.build_jobs, launch)
                self._jobserver = schedule.Jobserver(slots)
            return self._jobserver

    def close(self) -> None:
        """The job budget's pipe closed, the compiler versions learnt kept for next time."""
        if self._jobserver is not None:
            self._jobserver.close()
            self._jobserver = None
        self.facts.versions.save()

    # -- locks: one (package, kernel) pair at a time; one kernel's module tree at a time --
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


def running_release() -> str:
    return os.uname().release
