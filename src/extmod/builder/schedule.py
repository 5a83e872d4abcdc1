"""One job budget for a whole command, shared with every make it runs.

A command that touches several (package, kernel) pairs runs them as a graph: a pair starts
once the pairs it depends on (BUILD_DEPENDS, same kernel) have finished, and once a job slot
is free. The slots are GNU make's jobserver (make 4.3: ``--jobserver-auth=R,W`` in MAKEFLAGS,
a pipe holding one byte per slot beyond the first): extmod is the top-level "make", each
running pair holds one slot as a make child does, and the makes it runs take further slots
from the same pipe. So ``-j N`` bounds the whole command: small modules build side by side,
and a big one uses the slots the others leave.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_POLL = 0.05  # seconds between looks for a slot freed by a make


class Jobserver:
    """The pipe of slot tokens. ``slots`` is the budget; one slot is implicit (held by the
    first running job), so the pipe starts with ``slots - 1`` tokens."""

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError("a jobserver needs at least one slot")
        self.slots = slots
        self.read_fd, self.write_fd = os.pipe()
        os.set_inheritable(self.read_fd, False)
        os.set_inheritable(self.write_fd, False)
        # Our own non-blocking view of the read end: opening /proc/self/fd/N of a pipe gives
        # a new open file description, so O_NONBLOCK here does not change what makes see.
        self._poll_fd = os.open(f"/proc/self/fd/{self.read_fd}", os.O_RDONLY | os.O_NONBLOCK)
        os.write(self.write_fd, b"+" * (slots - 1))

    @property
    def pass_fds(self) -> tuple[int, int]:
        return (self.read_fd, self.write_fd)

    def make_env(self) -> dict[str, str]:
        """MAKEFLAGS for a child: every make below it joins this jobserver."""
        return {"MAKEFLAGS": f" -j{self.slots} --jobserver-auth={self.read_fd},{self.write_fd}"}

    def try_acquire(self) -> bytes | None:
        try:
            return os.read(self._poll_fd, 1) or None
        except BlockingIOError:
            return None

    def release(self, token: bytes) -> None:
        os.write(self.write_fd, token)

    def close(self) -> None:
        for fd in (self._poll_fd, self.read_fd, self.write_fd):
            os.close(fd)


@dataclass(frozen=True)
class Job(Generic[T]):
    key: Hashable
    work: Callable[[], T]
    after: tuple[Hashable, ...] = ()  # keys of jobs that must succeed first
    weight: float = 0.0  # expected size: heavier jobs start first (the longest one must
    # not start last and run alone at the end)


class DependencyFailed(Exception):
    def __init__(self, failed: Sequence[Hashable]):
        super().__init__(", ".join(map(str, failed)))
        self.failed = tuple(failed)


class _Run:
    """One run_all: what is pending, running and finished, and the slot bookkeeping. The
    process's implicit jobserver slot is used first; every other job holds a token."""

    def __init__(self, jobs: Sequence[Job[Any]], server: Jobserver):
        self.pending = list(jobs)
        self.keys = {j.key for j in jobs}
        self.server = server
        self.results: dict[Hashable, object] = {}
        self.errors: dict[Hashable, BaseException] = {}
        self.done: queue.Queue[tuple[Hashable, bytes | None, object, BaseException | None]] = (
            queue.Queue()
        )
        self.implicit_free = True
        self.running = 0

    def ready(self) -> list[Job[Any]]:
        """Jobs whose dependencies are met, heaviest first; a job whose dependency failed
        is failed too."""
        ready = []
        for job in list(self.pending):
            failed = [d for d in job.after if d in self.errors]
            if failed:
                self.pending.remove(job)
                self.errors[job.key] = DependencyFailed(failed)
            elif all(d not in self.keys or d in self.results for d in job.after):
                ready.append(job)
        ready.sort(key=lambda j: -j.weight)
        return ready

    def start(self, ready: list[Job[Any]]) -> None:
        """As many of ``ready`` as there are slots, each in a thread."""
        for job in ready:
            token = None
            if not self.implicit_free:
                token = self.server.try_acquire()
                if token is None:
                    return
            self.implicit_free = False
            self.pending.remove(job)
            self.running += 1
            threading.Thread(
                target=self._body, args=(job, token), name=f"extmod-job-{job.key}", daemon=True
            ).start()

    def _body(self, job: Job[Any], token: bytes | None) -> None:
        try:
            self.done.put((job.key, token, job.work(), None))
        except BaseException as e:  # handed to the caller, not lost
            self.done.put((job.key, token, None, e))

    def stuck(self) -> None:
        """Nothing runs and nothing could start: what is left waits on itself."""
        for job in self.pending:
            self.errors[job.key] = DependencyFailed(
                [d for d in job.after if d in self.keys and d not in self.results]
            )

    def collect(self, waiting_for_slot: bool) -> None:
        """The next finished job (or, while a ready job waits for a slot, a short wait)."""
        try:
            key, token, value, error = self.done.get(timeout=_POLL if waiting_for_slot else None)
        except queue.Empty:
            return
        self.running -= 1
        if token is None:
            self.implicit_free = True
        else:
            self.server.release(token)
        if error is None:
            self.results[key] = value
        else:
            self.errors[key] = error


def run_all(jobs: Sequence[Job[T]], server: Jobserver) -> Mapping[Hashable, T | BaseException]:
    """Run ``jobs`` (each in a thread, each holding one slot of ``server``), dependencies
    first, heaviest first, as many at once as the slots allow. A job whose dependency
    failed does not run and gets DependencyFailed; a dependency on a key not in ``jobs``
    counts as met. Returns each key's result or the exception it raised."""
    run = _Run(jobs, server)
    while run.pending or run.running:
        ready = run.ready()
        run.start(ready)
        if not run.running:
            run.stuck()
            break
        run.collect(waiting_for_slot=any(j in ready for j in run.pending))
    merged: dict[Hashable, object] = {**run.results, **run.errors}
    return merged  # type: ignore[return-value]
