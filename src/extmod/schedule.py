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
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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


@dataclass
class _Run:
    results: dict[Hashable, object] = field(default_factory=dict)
    errors: dict[Hashable, BaseException] = field(default_factory=dict)


def run_all(jobs: Sequence[Job[T]], server: Jobserver) -> Mapping[Hashable, T | BaseException]:
    """Run ``jobs`` (each in a thread, each holding one slot of ``server``), dependencies
    first, heaviest first, as many at once as the slots allow. A job whose dependency
    failed does not run and gets DependencyFailed; a dependency on a key not in ``jobs``
    counts as met. Returns each key's result or the exception it raised."""
    pending = list(jobs)
    keys = {j.key for j in jobs}
    done: queue.Queue[tuple[Hashable, bytes | None, object, BaseException | None]] = queue.Queue()
    out = _Run()
    implicit_free = True
    running = 0

    def start(job: Job[T], token: bytes | None) -> None:
        def body() -> None:
            try:
                done.put((job.key, token, job.work(), None))
            except BaseException as e:  # handed to the caller, not lost
                done.put((job.key, token, None, e))

        threading.Thread(target=body, name=f"extmod-job-{job.key}", daemon=True).start()

    while pending or running:
        ready = []
        for job in list(pending):
            failed = [d for d in job.after if d in out.errors]
            if failed:
                pending.remove(job)
                out.errors[job.key] = DependencyFailed(failed)
            elif all(d not in keys or d in out.results for d in job.after):
                ready.append(job)
        ready.sort(key=lambda j: -j.weight)
        for job in ready:
            token = None
            if not implicit_free:
                token = server.try_acquire()
                if token is None:
                    break
            implicit_free = False
            pending.remove(job)
            running += 1
            start(job, token)
        if not running:
            # Nothing runs and nothing could start: what is left waits on itself.
            for job in pending:
                out.errors[job.key] = DependencyFailed(
                    [d for d in job.after if d in keys and d not in out.results]
                )
            break
        waiting_for_slot = any(j in ready for j in pending)
        try:
            key, token, value, error = done.get(timeout=_POLL if waiting_for_slot else None)
        except queue.Empty:
            continue
        running -= 1
        if token is None:
            implicit_free = True
        else:
            server.release(token)
        if error is None:
            out.results[key] = value
        else:
            out.errors[key] = error
    merged: dict[Hashable, object] = {**out.results, **out.errors}
    return merged  # type: ignore[return-value]
