"""The one place that spawns processes: argv lists, a scrubbed environment, logs."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from extmod.errors import EnvError, ToolchainError, UserError

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


def capture(argv: Sequence[str | Path]) -> str:
    """Run a short query (``cc --version``) and return its stdout."""
    args = [str(a) for a in argv]
    try:
        res = subprocess.run(args, env=scrubbed_env(), capture_output=True, text=True,
                             check=False, stdin=subprocess.DEVNULL, timeout=60)
    except FileNotFoundError:
        raise ToolchainError(_not_found(args[0])) from None
    if res.returncode != 0:
        raise CommandFailed(args, res.returncode, None, res.stdout + res.stderr)
    return res.stdout


def query(argv: Sequence[str | Path], *, cwd: Path | None = None, timeout: int = 120,
          user: RunAs | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a command whose stdout is data (bash reading a dkms.conf); the caller judges the
    exit status. Raises subprocess.TimeoutExpired after ``timeout`` seconds, having killed
    the child's whole process group: a dkms.conf that loops does so in a subshell, which
    would outlive its parent."""
    proc = subprocess.Popen([str(a) for a in argv], cwd=cwd,
                            env=scrubbed_env(user.env() if user else None),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            user=user.uid if user else None,
                            group=user.gid if user else None,
                            extra_groups=[] if user else None)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group our child leads: its pid
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild left the group, holding the pipe
            pass
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_logged(argv: Sequence[str | Path], *, log: Path, cwd: Path | None = None,
               echo: bool = False, env: Mapping[str, str] | None = None,
               pass_fds: Sequence[int] = (), user: RunAs | None = None) -> None:
    """Run a long command (make); all of its output goes to ``log`` (appended).
    ``pass_fds``: descriptors the child inherits (the jobserver's pipe)."""
    args = [str(a) for a in argv]
    full_env = {**(env or {}), **(user.env() if user else {})}
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(args, cwd=cwd, env=scrubbed_env(full_env),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, pass_fds=tuple(pass_fds),
                                    user=user.uid if user else None,
                                    group=user.gid if user else None,
                                    extra_groups=[] if user else None)
        except FileNotFoundError:
            raise ToolchainError(_not_found(args[0])) from None
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.readline(), b""):  # type: ignore[union-attr]
            out.write(chunk)
            if echo:
                os.write(2, chunk)
        rc = proc.wait()
    if rc != 0:
        raise CommandFailed(args, rc, log, "")


def system_tool(name: str, package: str) -> str:
    """A system binary, found on PATH or in the sbin dirs a user's PATH may lack."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise EnvError(f"{name} not found: apt-get install {package}")
    return found


def _not_found(binary: str) -> str:
    return f"{binary} not found"
