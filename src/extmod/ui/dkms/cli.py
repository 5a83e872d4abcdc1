"""``dkms``: DKMS 3.x's command line, answered by extmod's engine (issue 12).

A thin front. It parses the command line the way dkms 3.0.10 does (its option loop at the
end of dkms.in: ``-m N -v V``, ``N/V``, ``-k KVER[/ARCH]``, ``--opt=value`` and
``--opt value``, the action anywhere among them), then calls the same ``session.Session``
the ``extmod`` verbs call. What scripts read is DKMS's: the ``status`` line format
(``do_status``) and the exit codes of the situations scripts test for (77 for a
BUILD_EXCLUSIVE skip, 3 for a package not added, 0 for "already built/installed, skip").
The packages, builds and installs are extmod's state tree: ``extmod status`` and
``dkms status`` read the same records.

Where DKMS's trees go: ``--dkmstree`` is extmod's state dir, ``--sourcetree`` its /usr/src,
``--installtree`` where modules are installed (kernels are still found at
/lib/modules/KVER/build, as DKMS finds them). ``EXTMOD_ROOT`` stages the whole root.

The rooms of ui/dkms/: ``args`` (the command line as data), ``front`` (what every action
shares), ``add`` (add, mktarball, ldtarball), ``verbs`` (build … remove, autoinstall, the
kernel hooks), ``report`` (status, match, generate_mok), ``postinst`` (common.postinst);
this module parses, dispatches and maps errors to DKMS's exit codes. Every action runs in
the bracket the ``extmod`` verbs run in (``ops/commands.bracket``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from extmod.core import run
from extmod.core.errors import (
    ExtmodError,
    refused_write,
)
from extmod.ops import commands, session
from extmod.ui.dkms import add as dkmsadd
from extmod.ui.dkms import report as dkmsreport
from extmod.ui.dkms import verbs as dkmsverbs
from extmod.ui.dkms import words as dkmswords
from extmod.ui.dkms.args import ACTIONS, DKMS_VERSION, USAGE, Args, DkmsExit, parse, read_framework
from extmod.ui.dkms.front import Front
from extmod.ui.dkms.postinst import common_postinst

__all__ = [
    "ACTIONS",
    "DKMS_VERSION",
    "Args",
    "DkmsExit",
    "Front",
    "common_postinst",
    "main",
    "parse",
    "read_framework",
]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = False
    try:
        a = parse(argv)
        quiet = "quiet" in a.flags
        return _run(a)
    except DkmsExit as e:
        if e.lines and e.warn:
            print("Warning: " + "\n".join(e.lines), file=sys.stderr)
        elif e.lines:
            print(
                "\nError! " + "\n".join(e.lines), file=sys.stderr
            )  # dkms's error(): a blank line first
        if e.usage:
            print(USAGE, file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("dkms (extmod): interrupted", file=sys.stderr)
        return 130
    except ExtmodError as e:
        print(f"\nError! {e}", file=sys.stderr)
        return 1
    except OSError as e:
        refused = refused_write(e)
        if refused is None:
            return _internal(quiet)
        print(f"\nError! {refused}", file=sys.stderr)
        return 1  # what DKMS exits with when a write fails
    except Exception:
        return _internal(quiet)


def _run(a: Args) -> int:
    if "quiet" in a.flags:
        _silence()
    if "version" in a.flags:
        print(f"dkms-{Front(a).dkms_version}")  # dkms's RELEASE_STRING: scripts parse it
        return 0
    for w in a.warnings:
        print(f"Warning: {w}", file=sys.stderr)
    if not a.action and "archive" not in a.values:
        # dkms prints this and the usage, and exits 0; a usage error is 2 here
        raise DkmsExit(2, 'Unknown action specified: ""', usage=True)
    with run.children_end_with_us():
        fr = Front(a)
        if a.action == "kernel_preinst" and not fr.since("3.1.6"):
            # an action DKMS 3.0.10 does not have (it takes the word for a module name)
            raise DkmsExit(2, 'Unknown action specified: ""', usage=True)
        return dispatch(fr)


def _silence() -> None:
    """dkms's -q: ``exec >/dev/null 2>&1``, for everything it and its children print."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


def _internal(quiet: bool) -> int:
    """A bug (called in its except block): one line, the traceback with EXTMOD_DEBUG=1."""
    if not quiet and os.environ.get("EXTMOD_DEBUG"):
        raise  # the exception being handled
    print(
        f"Error! internal error in extmod: {sys.exc_info()[1]!r} (rerun with "
        f"EXTMOD_DEBUG=1 for a traceback)",
        file=sys.stderr,
    )
    return 1


def dispatch(fr: Front) -> int:
    action = fr.a.action or "ldtarball"  # a bare archive: dkms loads it
    if action == "status":
        for line in dkmsreport.status_lines(fr):
            print(line)
        return 0
    if action == "generate_mok":
        return dkmsreport.generate_mok(fr)
    fr.check_kernels(action)
    fr._check_privilege(action)
    s = fr.new_session()
    depmod: list[str] = []
    try:
        # the bracket both command lines share: recover, the action, depmod, and after
        # autoinstall and kernel_postinst [verify] after_install (ops/commands.py)
        rc = commands.bracket(s, action, lambda: _DO[action](fr, s), depmod)
    finally:
        if depmod:
            for line in fr.before_depmod:
                fr.out(line)
        for kver in depmod:
            dkmswords.depmod(fr, kver)
        for line in fr.after_depmod:
            fr.out(line)
        fr.say_scripts()  # any the words had no place for
    if rc == 0:  # DKMS 3.2 runs it once the action is done, depmod included
        fr.post_transaction(action, s)
    return rc


_DO: dict[str, Callable[[Front, session.Session], int]] = {
    "add": dkmsadd.do_add,
    "mktarball": dkmsadd.do_mktarball,
    "ldtarball": dkmsadd.do_ldtarball,
    "build": dkmsverbs.do_build,
    "install": dkmsverbs.do_install,
    "uninstall": dkmsverbs.do_uninstall,
    "unbuild": dkmsverbs.do_unbuild,
    "remove": dkmsverbs.do_remove,
    "autoinstall": dkmsverbs.do_autoinstall,
    "kernel_postinst": dkmsverbs.do_kernel_postinst,
    "kernel_preinst": dkmsverbs.do_kernel_preinst,
    "kernel_prerm": dkmsverbs.do_kernel_prerm,
    "match": dkmsreport.do_match,
}
