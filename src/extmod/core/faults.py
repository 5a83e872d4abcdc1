"""Named crash points for the fault-injection tests (docs/reference/guarantees.md).

``EXTMOD_CRASH_AT=NAME`` makes extmod kill itself with SIGKILL the first time it reaches
NAME: no cleanup, no finally, as a power cut would leave it. ``POINTS`` lists every point,
so the test can walk them all.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "build:published",  # a build is in the state tree; its install has not begun
    "install:staged",  # an upgrade's first new module is staged beside its place
    "install:journaled",  # the install's journal is written; /lib/modules untouched
    "install:original",  # the first in-tree module is moved away
    "install:file",  # the first .ko is in place
    "install:recorded",  # the install record is written; the journal not yet removed
    "uninstall:journaled",
    "uninstall:file",  # the first installed .ko is removed
    "uninstall:recorded",  # the install record is dropped; the journal not yet removed
    "remove:unbuilt",  # the builds are gone; the package is still registered
    "depmod:before",  # every change is made; depmod has not run
    "store:filing",  # a build's first module is copied into the store's object, not renamed
)


def point(name: str) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name}")
    if os.environ.get("EXTMOD_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
