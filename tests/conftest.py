"""Shared fixtures: the cached real kernel trees, running extmod as root or as a user."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
CACHE = Path(os.environ.get("EXTMOD_TEST_CACHE", "/var/cache/extmod-tests"))
NOBODY = 65534


@pytest.fixture(scope="session")
def trees() -> dict[str, Any]:
    manifest = CACHE / "trees.json"
    if not manifest.exists():
        pytest.fail(f"{manifest} missing: run scripts/test.sh (it prepares the kernel trees)")
    data: dict[str, Any] = json.loads(manifest.read_text())
    return data


@dataclass
class Ran:
    rc: int
    out: str
    err: str
    session: int = 0  # the session extmod led (its pid), so leftovers can be found

    def json(self) -> Any:
        return json.loads(self.out)

    def left_running(self) -> list[str]:
        """Processes still in extmod's session: none may outlive it."""
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == self.session and fields[0] != "Z":
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                left.append(f"{stat.parent.name}: {cmdline.decode(errors='replace')}")
        return left


def extmod(
    args: Sequence[str | Path],
    *,
    env: dict[str, str] | None = None,
    user: int | None = None,
    wrap: Sequence[str] = (),
    timeout: int = 600,
) -> Ran:
    """Run ``python -m extmod`` in a child, optionally as an unprivileged uid.

    As another user the child is Debian's /usr/bin/python3 with a world-readable copy of the
    package on PYTHONPATH (the repo and its venv may sit under a 0700 /root).
    """
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": os.environ.get("HOME", "/root"),
    }
    base_env.update(env or {})
    if user is None:
        argv = [sys.executable, "-m", "extmod", *map(str, args)]
        base_env["PYTHONPATH"] = str(REPO / "src")
    else:
        argv = [
            "setpriv",
            f"--reuid={user}",
            f"--regid={user}",
            "--clear-groups",
            "/usr/bin/python3",
            "-m",
            "extmod",
            *map(str, args),
        ]
        base_env["PYTHONPATH"] = str(_world_readable_src())
        base_env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    with subprocess.Popen(
        [*wrap, *argv],
        env=base_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own session: Ran.left_running finds what outlives it
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return Ran(proc.returncode, out, err, proc.pid)


_SRC_COPY: list[Path] = []


def _world_readable_src() -> Path:
    if not _SRC_COPY:
        dest = Path("/var/tmp") / f"extmod-src-{os.getpid()}"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(REPO / "src", dest, ignore=shutil.ignore_patterns("__pycache__"))
        for dirpath, _dirs, files in os.walk(dest):
            os.chmod(dirpath, 0o755)
            for f in files:
                os.chmod(Path(dirpath) / f, 0o644)
        _SRC_COPY.append(dest)
    return _SRC_COPY[0]


# -- the second lane (issue 26) ----------------------------------------------------------
# The heaviest builds of a few tests (zfs built by both tools in the parity test, zfs for
# test_real_zfs) start when the session starts, in a process group of their own at the
# lowest CPU priority, so that they use the core the rest of the suite leaves idle (small
# kbuild runs, python and bash start-ups, single-threaded qemu boots, apt in a chroot) and
# give it back at once when a foreground test wants it. The tests themselves run last and
# wait for their job before asserting: the same work and the same assertions, overlapped.


@dataclass
class LaneJob:
    work: Path  # a dir of the job's own under /var/tmp, removed with the job
    proc: subprocess.Popen[bytes]
    started: float

    def wait(self, timeout: float) -> int:
        """The job's exit status; stopped and failed at ``timeout`` seconds from its start."""
        left = max(1.0, timeout - (time.monotonic() - self.started))
        try:
            return self.proc.wait(left)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"lane job timed out after {timeout:.0f} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return (self.work / "lane.log").read_text(errors="replace")

    def stop(self) -> None:
        """Its whole process group: SIGTERM, then SIGKILL after 10 s (no process outlives
        the suite)."""
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # what the leader left behind


LaneStarter = Callable[[dict[str, Any], Path], Sequence[str | Path]]
_LANE: dict[str, LaneJob] = {}


def start_lane_job(starter: LaneStarter, trees: dict[str, Any]) -> LaneJob:
    """Prepare ``work`` with ``starter(trees, work)`` and run the argv it returns there, at
    nice 19, output to work/lane.log."""
    work = Path(tempfile.mkdtemp(prefix="extmod-lane-", dir="/var/tmp"))
    work.chmod(0o755)
    argv = [str(a) for a in starter(trees, work)]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": f"{REPO / 'src'}:{REPO / 'tests'}",
    }
    with open(work / "lane.log", "wb") as log:
        # A session of its own is an autogroup of its own (CONFIG_SCHED_AUTOGROUP): the
        # scheduler shares the CPU between autogroups first, whatever the nice values inside
        # them, so the autogroup itself is given nice 19 (sched(7), /proc/PID/autogroup);
        # without it the lane took half the CPU and the apt tests ran 3 times slower.
        proc = subprocess.Popen(
            [
                "sh",
                "-c",
                'echo 19 > /proc/self/autogroup 2>/dev/null; exec nice -n 19 "$@"',
                "lane",
                *argv,
            ],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return LaneJob(work, proc, time.monotonic())


def _starter(item: pytest.Item) -> LaneStarter:
    """``@pytest.mark.lane("NAME")``: the function NAME of the test's module."""
    marker = item.get_closest_marker("lane")
    assert marker is not None and isinstance(item, pytest.Function)
    starter: LaneStarter = getattr(item.module, marker.args[0])
    return starter


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests with a lane job run last: their jobs overlap everything before them. Just
    before them, the tests marked ``disk``: the lane jobs are niced, but nice does not
    reach the disk (mq-deadline), and beside them these ran 2-3x slower (issue 26)."""
    lane = [i for i in items if i.get_closest_marker("lane")]
    disk = [i for i in items if i.get_closest_marker("disk") and i not in lane]
    items[:] = [i for i in items if i not in lane and i not in disk] + disk + lane


def pytest_collection_finish(session: pytest.Session) -> None:
    manifest = CACHE / "trees.json"
    if session.config.option.collectonly or not manifest.exists():
        return  # nothing to run (or the tests fail on the trees fixture)
    trees = json.loads(manifest.read_text())
    for item in session.items:
        if item.get_closest_marker("lane") and item.nodeid not in _LANE:
            _LANE[item.nodeid] = start_lane_job(_starter(item), trees)


@pytest.fixture
def lane_job(request: pytest.FixtureRequest, trees: dict[str, Any]) -> Iterator[LaneJob]:
    """The job this test's ``lane`` marker started with the session (started now when the
    session did not: trees prepared after collection)."""
    job = _LANE.pop(request.node.nodeid, None)
    if job is None:
        job = start_lane_job(_starter(request.node), trees)
    try:
        yield job
    finally:
        job.stop()
        shutil.rmtree(job.work, ignore_errors=True)


_SESSION_START: list[float] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _SESSION_START.append(time.monotonic())
    # SIGTERM (CI's timeout, a kill) ends the run as Ctrl-C does, so that sessionfinish
    # stops the lane jobs: they run in sessions of their own and would outlive the suite.
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for job in _LANE.values():  # a lane test deselected or never reached (-x, Ctrl-C)
        job.stop()
        shutil.rmtree(job.work, ignore_errors=True)
    for d in _SRC_COPY:
        shutil.rmtree(d, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """scripts/test.sh's wall times (setup, trees) and this run's, before pytest's closing
    line (which stays last, for whoever reads the result from it)."""
    before = os.environ.get("EXTMOD_TEST_WALL")
    if before and _SESSION_START:
        tests = time.monotonic() - _SESSION_START[0]
        terminalreporter.write_line(f"test.sh wall time: {before}, tests {tests:.0f} s")


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A world-traversable scratch dir (pytest's tmp parents are 0700) with a HOME that the
    unprivileged user owns."""
    d = Path(tempfile.mkdtemp(prefix="extmod-test-", dir="/var/tmp"))
    d.chmod(0o755)
    (d / "home").mkdir()
    os.chown(d / "home", NOBODY, NOBODY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def copy_example(name: str, dest: Path, owner: int | None = None) -> Path:
    out = dest / name
    shutil.copytree(EXAMPLES / name, out)
    if owner is not None:
        for p in [out, *out.rglob("*")]:
            os.chown(p, owner, owner)
    return out


def snapshot(tree: Path) -> str:
    """Digest of every path, type, mode and content under ``tree`` (symlinks not followed)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(tree)}\0{st.st_mode}\0".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def debian_source_dir(kver: str) -> str:
    """Where Debian's /lib/modules/KVER/source leads: the headers' -common tree."""
    return str(Path("/lib/modules", kver, "source").resolve())


def listing(tree: Path) -> set[str]:
    return {str(p.relative_to(tree)) for p in tree.rglob("*")}


def make_root(root: Path, kver: str, tree: str, source: str | None = None) -> Path:
    """ROOT/lib/modules/KVER/build leading (relatively) to a real tree, as on a system, and
    this machine's os-release (so modules go where Debian's dkms puts them). ``source``:
    where ROOT/lib/modules/KVER/source leads (Debian's -common tree), if anywhere."""
    link = root / "lib/modules" / kver / "build"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(tree, link.parent))
    if source is not None:
        (link.parent / "source").symlink_to(os.path.relpath(source, link.parent))
    (root / "etc").mkdir(exist_ok=True)
    shutil.copyfile("/etc/os-release", root / "etc/os-release")
    return root


def unpack_headers(root: Path, trees: dict[str, Any], distro: str = "debian") -> Path:
    """A staged root with Debian's real linux-headers packages of the gcc tree unpacked
    (``dpkg-deb -x``, as dpkg would lay them out) and an os-release naming ``distro``."""
    for deb in sorted(Path(trees["gcc"]["header_debs"]).glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/os-release").write_text(f"ID={distro}\n")
    return root


def copy_headers(src: Path, dest: Path) -> None:
    """A copy of a Debian headers dir whose relative links (scripts -> ../../lib/...) still
    lead where the original's do."""
    shutil.copytree(src, dest, symlinks=True)
    for link in dest.iterdir():
        if link.is_symlink() and not os.path.isabs(os.readlink(link)):
            target = (src / os.readlink(link)).resolve()
            link.unlink()
            link.symlink_to(target)


# -- qemu: modules load -------------------------------------------------------------
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
echo "EXTMOD-KERNEL $(uname -r)"
for m in /mods/*.ko; do insmod "$m" && echo "EXTMOD-INSMOD-OK ${m#/mods/??-}"; done
cat /proc/modules
for m in $(ls -r /mods/*.ko); do
  n=${m#/mods/??-}; n=${n%.ko}; rmmod "$n" && echo "EXTMOD-RMMOD-OK $n"
done
dmesg | grep extmod-
echo EXTMOD-DONE
reboot -f
"""


def load_order(modules: list[Path]) -> list[Path]:
    """``modules`` with each after those it depends on (modinfo's depends), as modprobe
    would load them; unloaded in the reverse order."""
    by_name = {m.name.removesuffix(".ko"): m for m in modules}
    deps = {
        n: [
            d
            for d in subprocess.run(
                ["modinfo", "-F", "depends", str(m)], check=True, capture_output=True, text=True
            )
            .stdout.strip()
            .split(",")
            if d in by_name
        ]
        for n, m in by_name.items()
    }
    order: list[str] = []

    def visit(n: str) -> None:
        if n not in order:
            for d in deps[n]:
                visit(d)
            order.append(n)

    for n in sorted(by_name):
        visit(n)
    return [by_name[n] for n in order]


def boot(kernel: Path, modules: list[Path], busybox: str, work: Path, memory: int = 512) -> str:
    """Boot ``kernel`` in qemu (TCG) with a busybox initramfs whose /init insmods, lists and
    rmmods ``modules`` (in dependency order); the serial console's text."""
    rootfs = work / "initramfs"
    for d in ("bin", "proc", "sys", "dev", "mods"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy(busybox, rootfs / "bin/busybox")
    (rootfs / "init").write_text(INIT)
    (rootfs / "init").chmod(0o755)
    for i, ko in enumerate(load_order(modules)):
        shutil.copy(ko, rootfs / "mods" / f"{i:02d}-{ko.name}")
    cpio = work / "initramfs.cpio"
    files = subprocess.run(["find", "."], cwd=rootfs, capture_output=True, check=True).stdout
    with open(cpio, "wb") as out:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=rootfs, input=files, stdout=out, check=True
        )
    res = subprocess.run(
        [
            "timeout",
            "240",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            str(memory),
            "-nographic",
            "-no-reboot",
            "-kernel",
            str(kernel),
            "-initrd",
            str(cpio),
            "-append",
            "console=ttyS0 panic=-1 loglevel=7",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    return res.stdout + res.stderr


def check_console(console: str, kver: str, names: list[str], messages: list[str]) -> None:
    """The booted kernel is ``kver`` and each module loaded and unloaded."""
    assert "EXTMOD-DONE" in console, console[-3000:]
    assert f"EXTMOD-KERNEL {kver}" in console
    for n in names:
        assert f"EXTMOD-INSMOD-OK {n}.ko" in console, console[-3000:]
        assert f"EXTMOD-RMMOD-OK {n}" in console
    for msg in messages:
        assert msg in console, console[-3000:]


# -- small dkms.conf packages made on the fly -----------------------------------------
HEADER = '#include <linux/module.h>\n#include <linux/kernel.h>\nMODULE_LICENSE("GPL");\n'


def package(
    dest: Path, name: str, files: dict[str, str], kbuild: str, make: str = "", extra: str = ""
) -> Path:
    dest.mkdir(parents=True)
    for fname, text in files.items():
        (dest / fname).write_text(text)
    (dest / "Kbuild").write_text(kbuild)
    mods = re.findall(r"(\w+)\.o", kbuild.split("\n")[0])
    conf = [f'PACKAGE_NAME="{name}"', 'PACKAGE_VERSION="1.0"', 'AUTOINSTALL="yes"']
    for i, m in enumerate(mods):
        conf += [f'BUILT_MODULE_NAME[{i}]="{m}"', f'DEST_MODULE_LOCATION[{i}]="/extra"']
    if make:
        conf.append(f"MAKE[0]='{make}'")
    (dest / "dkms.conf").write_text("\n".join(conf) + "\n" + extra)
    return dest


def free_port() -> int:
    """A TCP port on 127.0.0.1 no one listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(data: Path) -> Iterator[str]:
    """A real redis-server on 127.0.0.1, a port of its own, nothing saved (its dir:
    ``data``); stopped by its PID. redis-tools' binary is the server when called
    redis-server (the redis-server package only adds that link and a system service,
    which the test setup does not install)."""
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(data), "--protected-mode", "yes"],
        executable=shutil.which("redis-server") or "/usr/bin/redis-check-rdb",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while redis_cli(port, "PING") != "PONG":
            assert time.monotonic() < deadline and proc.poll() is None, "redis did not start"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def openssl_pair(d: Path, name: str = "fleet") -> tuple[Path, Path]:
    """A new signing key (PEM, 0600) and its DER certificate in ``d``, as a fleet's MOK."""
    d.mkdir(parents=True, exist_ok=True)
    key, cert = d / f"{name}.key", d / f"{name}.der"
    subprocess.run(
        ["openssl", "req", "-new", "-x509", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-newkey", "rsa:2048", "-keyout", key, "-outform", "DER", "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return key, cert


NGINX_CONF = """daemon off;
master_process off;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {d}/dav;
        client_max_body_size 0;
        dav_methods PUT;
        create_full_put_path on;
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(binary: str, data: Path) -> Iterator[str]:
    """A real nginx (Debian's, unpacked by testtrees) serving WebDAV's PUT beside GET and
    HEAD on 127.0.0.1, a port of its own, everything in ``data``; one process (no
    master), stopped by its PID. Yields the store URL."""
    port = free_port()
    (data / "tmp").mkdir(parents=True, exist_ok=True)
    (data / "dav").mkdir(exist_ok=True)
    conf = data / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=data, port=port))
    proc = subprocess.Popen(
        [binary, "-p", str(data), "-c", str(conf), "-e", str(data / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, (
                "nginx did not start: " + (data / "error.log").read_text()[-500:]
            )
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/store"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def redis_cli(port: int, *command: str) -> str:
    r = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *command],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip()


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """extmod's .deb, built once per run from this checkout with Debian's tools
    (scripts/deb.sh: dpkg-buildpackage, lintian clean), for the apt tests of Debian 12
    and 13."""
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run(
        ["bash", str(REPO / "scripts/deb.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout + res.stderr  # lintian clean included
    return next(out.glob("extmod_*_all.deb"))


# -- helpers the tests of several features share ---------------------------------------
COMMON_POSTINST = REPO / "src/extmod/hookfiles/dkms-common.postinst"


def _as_a_hook(root: Path, argv: list[str], env: dict[str, str] | None = None) -> Any:
    """``argv`` with the environment a package's maintainer script has, at ``root``."""
    full = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(root),
        "EXTMOD_ROOT": str(root),
        "PYTHONPATH": str(REPO / "src"),
        **(env or {}),
    }
    return subprocess.run(
        argv, env=full, text=True, capture_output=True, timeout=900, stdin=subprocess.DEVNULL
    )


def postinst(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """extmod's /usr/lib/dkms/common.postinst, as dh_dkms's postinst runs it."""
    ran: subprocess.CompletedProcess[str] = _as_a_hook(
        root, [sys.executable, str(COMMON_POSTINST), *args]
    )
    return ran


def dkms(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """extmod's ``dkms`` command line."""
    cli = "import sys; from extmod.ui.dkms.cli import main; sys.exit(main())"
    ran: subprocess.CompletedProcess[str] = _as_a_hook(
        root, [sys.executable, "-c", cli, *args], env
    )
    return ran


# Answers what the toolchain lookup asks (the version), and fails any compile.
NO_COMPILE = """#!/bin/sh
case "$1" in
--version|-v|-dumpversion|-dumpfullversion) exec /usr/bin/"$(basename "$0")" "$@";;
esac
echo "no compile expected: $0 $*" >&2
exit 1
"""


def failing_gcc(d: Path) -> dict[str, str]:
    """A PATH whose gcc answers the toolchain lookup and fails any compile."""
    d.mkdir(exist_ok=True)
    for name in ("gcc", "gcc-12", "x86_64-linux-gnu-gcc-12", "cc"):
        (d / name).write_text(NO_COMPILE)
        (d / name).chmod(0o755)
    return {"PATH": f"{d}:{os.environ['PATH']}"}
