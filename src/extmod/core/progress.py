"""What a command's (package, kernel) jobs are doing, for people.

``Board`` is the plain form: it shows nothing itself (the lines a command says are the
record). ``LiveBoard`` is for a terminal: under the lines said so far it keeps a block of
the running jobs, each with its phase and elapsed time, and a summary line, redrawn twice a
second with ANSI cursor moves; it is wiped when the command ends, so the scrollback holds
the plain lines only.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass
from typing import TextIO

Key = tuple[str, str]  # (NAME/VERSION, KVER)


class Board:
    def expect(self, key: Key) -> None:
        """A job that will run (it counts as waiting until it starts)."""

    def phase(self, key: Key, text: str) -> None:
        """A job started, or moved on (building, installing)."""

    def finish(self, key: Key, result: str) -> None:
        """A job ended; ``result`` is its outcome ("installed", "failed", ...)."""

    def say(self, text: str) -> None:
        """A line for the record."""

    def close(self) -> None:
        """The command is over."""


@dataclass
class _Job:
    phase: str = "waiting"
    started: float | None = None
    result: str | None = None


class LiveBoard(Board):
    REFRESH = 0.5

    def __init__(self, stream: TextIO):
        self._out = stream
        self._lock = threading.Lock()
        self._jobs: dict[Key, _Job] = {}
        self._drawn = 0  # lines of the block now on screen
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="extmod-progress", daemon=True)
        self._ticker.start()

    def expect(self, key: Key) -> None:
        with self._lock:
            self._jobs.setdefault(key, _Job())
            self._redraw()

    def phase(self, key: Key, text: str) -> None:
        with self._lock:
            job = self._jobs.setdefault(key, _Job())
            if job.started is None:
                job.started = time.monotonic()
            job.phase = text
            self._redraw()

    def finish(self, key: Key, result: str) -> None:
        with self._lock:
            job = self._jobs.setdefault(key, _Job())
            job.result = result
            self._redraw()

    def say(self, text: str) -> None:
        with self._lock:
            self._erase()
            self._out.write(text + "\n")
            self._draw()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._ticker.join()
        with self._lock:
            self._erase()
            self._jobs.clear()  # from now on, lines only
            self._out.flush()

    # -- drawing (the lock is held) --------------------------------------------------------
    def _tick(self) -> None:
        while not self._stop.wait(self.REFRESH):
            with self._lock:
                self._redraw()

    def _block(self) -> list[str]:
        if not self._jobs:
            return []
        now = time.monotonic()
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        running = [
            (k, j) for k, j in self._jobs.items() if j.started is not None and j.result is None
        ]
        lines = []
        for (ident, kver), job in running:
            assert job.started is not None
            lines.append(f"  {job.phase:<11} {ident} for {kver}  {now - job.started:5.1f}s")
        done = sum(1 for j in self._jobs.values() if j.result is not None)
        failed = sum(1 for j in self._jobs.values() if j.result == "failed")
        waiting = sum(1 for j in self._jobs.values() if j.started is None)
        total = now - self._t0
        summary = (
            f"[{done}/{len(self._jobs)} done, {len(running)} running, {waiting} "
            f"waiting{f', {failed} failed' if failed else ''}] "
            f"{int(total) // 60}:{int(total) % 60:02d} elapsed"
        )
        return [line[:width] for line in [*lines, summary]]

    def _erase(self) -> None:
        if self._drawn:
            # To the start of the block's first line, then clear to the end of the screen.
            self._out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        block = self._block()
        for line in block:
            self._out.write(line + "\n")
        self._drawn = len(block)
        self._out.flush()

    def _redraw(self) -> None:
        self._erase()
        self._draw()
