"""The one place that spawns processes: argv lists, a scrubbed environment, logs.

Every child starts in a process group of its own, known here until it ends, so that a
signal that ends extmod (SIGTERM from ``timeout``, systemd or a stopped apt; SIGINT; SIGHUP)
ends every child and grandchild too (``children_end_with_us``): a dkms.conf that loops in a
subshell, a make and its compilers, a package script. A root build can run in a private
mount namespace where the kernel's trees are bind-mounted read-only (``readonly=``), so no
step of it can write there, and where paths of a ``View`` exist (``view=``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from extmod.core import hints
from extmod.core.errors import EnvError, ToolchainError, UserError

# Variables a child may inherit. Everything else (CC, ARCH, CROSS_COMPILE, KBUILD_*,
# MAKEFLAGS, LLVM, ...) is dropped so the user's shell cannot silently change a build.
_KEEP = ("PATH", "HOME", "TMPDIR", "USER", "LOGNAME")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CommandFailed(Exception):
    def __init__(self, argv: Sequence[str], returncode: int, log: Path | None, output: str):
        super().__init__(f"{argv[0]} exited with {returncode}")
        self.argv = list(argv)
        self.returncode = returncode
        self.log = log
        self.output = output


@dataclass(frozen=True)
class RunAs:
    """An unprivileged user children run as (--build-user): no supplementary groups."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise UserError(f"build.user: no user {name!r} on this system") from None
        if pw.pw_uid == 0:
            raise UserError(f"build.user: {name!r} is root: give an unprivileged user")
        return cls(name, pw.pw_uid, pw.pw_gid, pw.pw_dir)

    def env(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


def scrubbed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEEP if k in os.environ}
    env.setdefault("PATH", _DEFAULT_PATH)
    env["LANG"] = "C.UTF-8"
    env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


# -- children end with extmod ------------------------------------------------------------
# The process groups of the children running now. Process-wide by nature: a signal ends the
# whole process, whichever thread started the child.
_live_groups: set[int] = set()
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_GRACE = 2.0  # seconds a child group gets to end on SIGTERM (make removes half-made targets)


@contextlib.contextmanager
def path_first(dirs: Sequence[Path]) -> Iterator[None]:
    """``dirs`` first on the PATH every child gets, for the block (preflight's staged
    tools)."""
    old = os.environ.get("PATH")
    if dirs:
        os.environ["PATH"] = ":".join([*map(str, dirs), old or _DEFAULT_PATH])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old


def _start(args: list[str], **kw: object) -> subprocess.Popen[bytes]:
    """Popen in a new session (so its own process group), registered until ``_ended``."""
    proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
        args, start_new_session=True, **kw
    )
    _live_groups.add(proc.pid)
    return proc


def _ended(proc: subprocess.Popen[bytes]) -> None:
    _live_groups.discard(proc.pid)


def end_children() -> None:
    """SIGTERM every running child's process group, SIGKILL what is left after a grace."""
    groups = list(_live_groups)
    for pg in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pg, signal.SIGTERM)
    deadline = time.monotonic() + _GRACE
    while groups and time.monotonic() < deadline:
        time.sleep(0.05)
        groups = [pg for pg in groups if _group_alive(pg)]
    for pg in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pg, signal.SIGKILL)


def _group_alive(pg: int) -> bool:
    """Whether a process of group ``pg`` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pg and fields[0] != "Z":  # state, ppid, pgrp
            return True
    return False


@contextlib.contextmanager
def children_end_with_us() -> Iterator[None]:
    """While it is open, a SIGTERM, SIGINT or SIGHUP that ends extmod first ends every
    child (``end_children``): SIGINT then raises KeyboardInterrupt as usual, the others
    end the process by the same signal. Main thread only (Python's signal rule)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        end_children()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    previous = {sig: signal.signal(sig, handler) for sig in _ENDING_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- read-only kernel trees ------------------------------------------------------------------
_unshare_ok: list[bool] = []  # probed once per process: can we make a mount namespace?


def readonly_supported() -> str | None:
    """None when root can run a child with read-only bind mounts here, else why not."""
    if os.geteuid() != 0:
        return "only root makes mount namespaces"
    path = scrubbed_env()["PATH"] + ":/usr/bin:/bin"
    for tool, package in (("unshare", "util-linux"), ("mount", "mount")):
        if shutil.which(tool, path=path) is None:
            return f"{tool} not found ({hints.install(package)})"
    if not _unshare_ok:
        ok = (
            subprocess.run(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "mount",
                    "--bind",
                    "/",
                    "/",
                ],
                env={"PATH": path},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
        _unshare_ok.append(ok)
    return (
        None
        if _unshare_ok[0]
        else "unshare --mount failed (no CAP_SYS_ADMIN here, or / "
        "is not a mount point: a chroot that is not mounted)"
    )


@dataclass(frozen=True)
class View:
    """Paths that exist only inside a build's private mount namespace: a tmpfs at ``root``
    holding bind mounts (source, where, read-only?) and small files (where, text), read-only
    itself once made, and the dir the command starts in. A read-write bind's source dir is
    made if missing. builder/pathmap.py makes one so compiles see the same paths for every
    kernel."""

    root: Path
    binds: tuple[tuple[Path, Path, bool], ...]
    files: tuple[tuple[Path, str], ...] = ()
    cwd: Path | None = None
    # (path in the view, the real path it shows) for people: a dir mirrored entry by entry
    # is said as the dir, not as where each entry leads
    shows: tuple[tuple[Path, Path], ...] = ()

    def to_real(self, text: str) -> str:
        """``text`` with each path in the view (``shows``) said as the real path."""
        for where, real in sorted(self.shows, key=lambda b: -len(str(b[0]))):
            text = text.replace(str(where), str(real))
        return text

    def steps(self) -> list[str]:
        """The shell steps that make the view (run.py runs them in the namespace)."""
        q = shlex.quote
        root = q(str(self.root))
        steps = [f"mkdir -p -- {root}", f"mount -t tmpfs -o mode=755,size=1m extmod-view {root}"]
        for src, where, ro in self.binds:
            w = q(str(where))
            if not ro:
                steps.append(f"mkdir -p -- {q(str(src))}")
            if not ro or src.is_dir():
                steps.append(f"mkdir -p -- {w}")
            else:
                steps += [f"mkdir -p -- {q(str(where.parent))}", f": > {w}"]
            steps.append(f"mount --bind -- {q(str(src))} {w}")
            if ro:
                steps.append(f"mount -o remount,bind,ro -- {w} {w}")
        for where, text in self.files:
            w = q(str(where))
            steps += [f"mkdir -p -- {q(str(where.parent))}", f"printf %s {q(text)} > {w}"]
        steps.append(f"mount -o remount,ro -- {root}")
        if self.cwd is not None:
            steps += [f"cd -- {q(str(self.cwd))}", "export PWD"]  # an outer $(PWD) too
        return steps


def _namespace_script(readonly: Sequence[Path], view: View | None) -> str:
    """The child's first steps in its private mount namespace: each read-only dir
    bind-mounted onto itself and remounted read-only; the view; then the command. Any
    failure stops it (exit 126) before the command runs."""
    q = shlex.quote
    steps: list[str] = []
    for d in readonly:
        steps.append(f"mount --bind -- {q(str(d))} {q(str(d))}")
        steps.append(f"mount -o remount,bind,ro -- {q(str(d))} {q(str(d))}")
    if view is not None:
        steps += view.steps()
    lines = [f"{step} || exit 126" for step in steps]
    return "\n".join(lines) + '\nexec "$@"\n'


def _readonly_argv(
    args: list[str], readonly: Sequence[Path], view: View | None = None
) -> list[str]:
    if (not readonly and view is None) or readonly_supported() is not None:
        return args
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        _namespace_script(readonly, view),
        "extmod-namespace",
        *args,
    ]


def _start_plain(args: list[str], out: int) -> subprocess.Popen[bytes]:
    """A child with the scrubbed environment and no stdin; stdout and stderr to ``out``
    (a pipe or /dev/null). A binary that is not there is a ToolchainError naming it."""
    try:
        return _start(args, env=scrubbed_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    except FileNotFoundError:
        raise ToolchainError(_not_found(args[0])) from None


def capture(argv: Sequence[str | Path]) -> str:
    """Run a short query (``cc --version``) and return its stdout."""
    args = [str(a) for a in argv]
    proc = _start_plain(args, subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CommandFailed(args, -9, None, "timed out after 60 s") from None
    finally:
        _ended(proc)
    if proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, None, (out + err).decode("utf-8", "replace"))
    return out.decode("utf-8", "replace")


def query(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    timeout: int = 120,
    user: RunAs | None = None,
    readonly: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    view: View | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command whose stdout is data (bash reading a dkms.conf); the caller judges the
    exit status. Raises subprocess.TimeoutExpired after ``timeout`` seconds, having killed
    the child's whole process group: a dkms.conf that loops does so in a subshell, which
    would outlive its parent. ``readonly``: dirs the child sees read-only (as root);
    ``view``: paths it sees besides (as root)."""
    args = [str(a) for a in argv]
    proc = _start(
        args if user else _readonly_argv(args, readonly, view),
        cwd=cwd,
        env=scrubbed_env({**(env or {}), **(user.env() if user else {})}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        user=user.uid if user else None,
        group=user.gid if user else None,
        extra_groups=[] if user else None,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group our child leads: its pid
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild left the group, holding the pipe
            pass
        raise
    finally:
        _ended(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def to_file(argv: Sequence[str | Path], dest: Path, *, limit: int, timeout: float) -> None:
    """Run a command whose stdout is a large stream of data (``dpkg-deb --fsys-tarfile``)
    into ``dest``, at most ``limit`` bytes. A failure, more than ``limit`` bytes or more
    than ``timeout`` seconds is a CommandFailed (in the last two, the child's group is
    killed), whose output is the command's stderr or the bound it passed."""
    args = [str(a) for a in argv]
    with open(dest, "wb") as out, tempfile.TemporaryFile() as err:
        try:
            proc = _start(
                args,
                env=scrubbed_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        except FileNotFoundError:
            raise ToolchainError(_not_found(args[0])) from None
        deadline, total, over = time.monotonic() + timeout, 0, ""
        try:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    over = f"more than {limit} bytes"
                elif time.monotonic() > deadline:
                    over = f"more than {timeout:g} s"
                if over:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                out.write(chunk)
            rc = proc.wait()
        finally:
            _ended(proc)
        if over or rc != 0:
            err.seek(0)
            raise CommandFailed(args, rc, None, over or err.read(4096).decode("utf-8", "replace"))


def watched(
    argv: Sequence[str | Path], *, timeout: float, keep_going: Callable[[float], bool]
) -> str:
    """Run a command whose output goes elsewhere (qemu's serial console to a file), asking
    ``keep_going(seconds so far)`` every 0.2 s. Returns "exited", "timed out" or
    "stopped"; in the last two cases the child's whole process group was killed."""
    args = [str(a) for a in argv]
    proc = _start_plain(args, subprocess.DEVNULL)
    started = time.monotonic()
    outcome = "exited"
    try:
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed >= timeout or not keep_going(elapsed):
                outcome = "timed out" if elapsed >= timeout else "stopped"
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.2)
    finally:
        _ended(proc)
    return outcome


def run_logged(
    argv: Sequence[str | Path],
    *,
    log: Path,
    cwd: Path | None = None,
    echo: bool = False,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    user: RunAs | None = None,
    readonly: Sequence[Path] = (),
    view: View | None = None,
) -> None:
    """Run a long command (make); all of its output goes to ``log`` (appended).
    ``pass_fds``: descriptors the child inherits (the jobserver's pipe). ``readonly``:
    dirs the child and all it starts see read-only (as root; a ``user`` cannot write
    root's trees anyway). ``view``: paths the child sees besides (as root)."""
    args = [str(a) for a in argv]
    full_env = {**(env or {}), **(user.env() if user else {})}
    with open(log, "ab") as out:
        try:
            proc = _start(
                args if user else _readonly_argv(args, readonly, view),
                cwd=cwd,
                env=scrubbed_env(full_env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=tuple(pass_fds),
                user=user.uid if user else None,
                group=user.gid if user else None,
                extra_groups=[] if user else None,
            )
        except FileNotFoundError:
            raise ToolchainError(_not_found(args[0])) from None
        try:
            assert proc.stdout is not None
            for chunk in iter(proc.stdout.readline, b""):
                out.write(chunk)
                if echo:
                    os.write(2, chunk)
            rc = proc.wait()
        finally:
            _ended(proc)
    if rc != 0:
        raise CommandFailed(args, rc, log, "")


def system_tool(name: str, package: str) -> str:
    """A system binary, found on PATH or in the sbin dirs a user's PATH may lack."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise EnvError(f"{name} not found: {hints.install(package)}")
    return found


def _not_found(binary: str) -> str:
    return f"{binary} not found"
