"""Typed errors. The library raises these; only the CLI turns them into exit codes.

Every message is one line a person can act on: it names the file, field or binary at fault.
"""

from __future__ import annotations

import errno
from pathlib import Path


class ExtmodError(Exception):
    """Base class; ``exit_code`` is the documented process exit status
    (docs/reference/exit-codes.md)."""

    exit_code = 1


class UserError(ExtmodError):
    """Bad input: a config file, a source dir, an argument's value."""

    exit_code = 3


class KernelError(ExtmodError):
    """No such kernel, or its build tree is not prepared."""

    exit_code = 4


class ToolchainError(ExtmodError):
    """The kernel's compiler or linker is not installed here."""

    exit_code = 5


class BuildError(ExtmodError):
    """kbuild failed; the message carries the first error and the log path."""

    exit_code = 6


class MakeFailed(BuildError):
    """The package's MAKE ended non-zero: its exit ``status`` and the ``make`` line it
    ran (dkms.conf's MAKE, ``KERNELRELEASE=`` given), which the dkms command says as DKMS
    says a failed build."""

    def __init__(self, message: str, status: int, make: str, log: Path):
        super().__init__(message)
        self.status = status
        self.make = make
        self.log = log


class ScriptError(BuildError):
    """One of the package's own scripts (POST_ADD, PRE_INSTALL, POST_INSTALL, POST_REMOVE)
    failed: not a module build (issue 22: a failing POST_ADD exited 6). A BuildError still,
    for whatever handles a build step's failure (the dkms front's codes stay DKMS's)."""

    exit_code = 12


class GuardError(ExtmodError):
    """apt's guard ([guard] mode = refuse): an incoming kernel would boot without a
    critical module, so apt stops before dpkg unpacks anything."""

    exit_code = 13


class EnvError(ExtmodError):
    """The environment refuses: a dir extmod must write is not writable, and the like."""

    exit_code = 7


class ExcludedError(ExtmodError):
    """dkms.conf's BUILD_EXCLUSIVE_* (or OBSOLETE_BY) rules this kernel out. autoinstall
    skips such packages; an explicit build or install of one fails with this code."""

    exit_code = 8


class LoadCheckError(ExtmodError):
    """A built module would not load into its kernel (vermagic, an unknown symbol, a CRC
    that disagrees): the install is refused; --force installs anyway."""

    exit_code = 9


class VerifyError(ExtmodError):
    """A module did not load in the verification VM: its init failed, it oopsed, it hung,
    or its signature was refused (extmod verify)."""

    exit_code = 10


class CannotVerifyError(ExtmodError):
    """This machine cannot boot the kernel to verify: qemu, a static busybox or the
    kernel's image is missing (the message names the package or the option)."""

    exit_code = 11


# What a write refused by the system raises (a read-only or full disk, a dir that is not
# ours): the environment's fault, exit 7 with the path, never an internal error (issue 22).
_REFUSED_WRITES = {
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
}


def refused_write(e: OSError) -> EnvError | None:
    """An ``EnvError`` naming the path for an ``OSError`` the system raised on a write; None
    for any other (a bug, reported as one)."""
    if e.errno not in _REFUSED_WRITES:
        return None
    where = f"{e.filename}: " if e.filename else ""
    also = f" (to {e.filename2})" if e.filename2 else ""
    return EnvError(f"{where}{e.strerror}{also}")


EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "internal error (a bug: please report it, rerun with --debug for a traceback)"),
    (2, "usage error: unknown verb or option"),
    (UserError.exit_code, "bad input: config file, source dir or option value"),
    (KernelError.exit_code, "kernel not found, or its build tree is not prepared"),
    (ToolchainError.exit_code, "the kernel's compiler or linker is not installed"),
    (BuildError.exit_code, "the module build failed (first error and log path are printed)"),
    (
        EnvError.exit_code,
        "a directory extmod must write is not writable, or a system "
        "tool (depmod, sign-file, openssl) failed",
    ),
    (ExcludedError.exit_code, "the package is not for this kernel (BUILD_EXCLUSIVE_*)"),
    (
        LoadCheckError.exit_code,
        "a built module would not load into the kernel: install "
        "refused (the module and the symbol are named)",
    ),
    (
        VerifyError.exit_code,
        "verify: a module failed to load, oopsed, hung or was refused in the VM",
    ),
    (
        CannotVerifyError.exit_code,
        "verify: cannot boot the kernel here (qemu, busybox-static or the image is "
        "missing: the fix is printed)",
    ),
    (
        ScriptError.exit_code,
        "a script of the package (POST_ADD, PRE_INSTALL, POST_INSTALL, POST_REMOVE) failed "
        "(its log is named)",
    ),
    (
        GuardError.exit_code,
        "apt-guard: an incoming kernel would boot without a critical module ([guard] mode "
        "= refuse): apt stops before anything is unpacked",
    ),
)
