"""A throwaway Debian 12 or 13 system for tests that run the real package manager (issue 12).

``Chroot(trees, dest)`` unpacks the cached base system (testtrees.py ``chroot_base``) into
``dest``. ``run(script)`` runs bash in it inside new mount and pid namespaces
(``unshare -mpf``): the chroot a mount point of its own, /proc, /sys and /dev as apt and the
maintainer scripts need them, and the shared download dir over /var/cache/apt/archives.
Every mount ends with the namespace, and every process with its init, so nothing the
package manager starts outlives the call. No service starts (policy-rc.d says no), and no
initramfs is made. apt reaches the mirror of this machine's own sources, which the base
system carries; nothing names it here.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
    "TERM": "dumb",
}
APT = "apt-get -y -q -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=0"
_LOCKED = "Could not get lock /var/cache/apt/archives/lock"


class Chroot:
    """``base``: the trees.json entry of the base system ("chroot": Debian 12,
    "chroot13": Debian 13)."""

    def __init__(self, trees: dict[str, Any], dest: Path, base: str = "chroot"):
        self.root = dest
        self.archives = Path(trees[base]["archives"])
        dest.mkdir(parents=True)
        subprocess.run(
            ["tar", "-xf", trees[base]["tarball"], "-C", str(dest), "--numeric-owner"],
            check=True,
        )
        rc = dest / "usr/sbin/policy-rc.d"
        rc.write_text("#!/bin/sh\nexit 101\n")
        rc.chmod(0o755)
        # No initramfs: the tests boot their own, and a kernel image's hooks would make one
        # twice per kernel (found first on PATH, before initramfs-tools' own). initramfs-
        # tools' trigger calls /usr/sbin/update-initramfs by name, so that path is diverted
        # as `dpkg-divert --local --rename --add` would record it, and holds the shim too.
        for where in ("usr/local/sbin", "usr/sbin"):
            shim = dest / where / "update-initramfs"
            shim.parent.mkdir(parents=True, exist_ok=True)
            shim.write_text("#!/bin/sh\nexit 0\n")
            shim.chmod(0o755)
        with open(dest / "var/lib/dpkg/diversions", "a") as f:
            f.write("/usr/sbin/update-initramfs\n/usr/sbin/update-initramfs.distrib\n:\n")
        shutil.copyfile("/etc/resolv.conf", dest / "etc/resolv.conf")
        # The machine's own certificate authorities (what its TLS to the registries
        # trusts), as its resolv.conf: a chroot on it trusts what it trusts.
        # (update-ca-certificates, run in the chroot, takes them in: ``trust_local_cas``)
        for ca in sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")):
            target = dest / "usr/local/share/ca-certificates" / ca.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ca, target)
        self.log = dest.parent / f"{dest.name}.log"

    def run(self, script: str, timeout: int = 3600, check: bool = True) -> str:
        """bash -c SCRIPT in the chroot; returns its output (stdout and stderr), which is
        also appended to the log beside the chroot. ``check``: raise on a non-zero exit.
        ``timeout``: generous (a loaded machine is slow, not wrong); past it, one line
        names the step that was too slow."""
        r = shlex.quote(str(self.root))
        setup = (
            "set -e\n"
            # a mount point, as schroot's and the installer's chroots are: extmod's builds
            # make a private mount namespace there (the kernel trees read-only)
            f"mount --bind {r} {r}\n"
            f"mount -t proc proc {r}/proc\n"
            f"mount --rbind /sys {r}/sys\n"
            f"mount --rbind /dev {r}/dev\n"
            f"mount --bind {shlex.quote(str(self.archives))} {r}/var/cache/apt/archives\n"
            f'exec chroot {r} /bin/bash -c "$1"\n'
        )
        try:
            res = self._run(setup, script, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"too slow, not a wrong result: a chroot step ran over {timeout} s: "
                f"{' '.join(script.split())[:160]}"
            ) from None
        out = res.stdout + res.stderr
        with open(self.log, "a") as f:
            f.write(f"\n### {script}\n{out}\n### exit {res.returncode}\n")
        if check and res.returncode != 0:
            raise AssertionError(f"exit {res.returncode} in the chroot: {script}\n{out[-4000:]}")
        return out

    def _run(self, setup: str, script: str, timeout: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "unshare",
                "-m",
                "-p",
                "-f",
                "--propagation",
                "private",
                "bash",
                "-c",
                setup,
                "chroot-run",
                "set -e\n" + script,
            ],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def apt(self, args: str, check: bool = True) -> str:
        """apt-get in the chroot. The download dir is shared by the chroots of the run, and
        apt does not wait for its lock: while a lane beside holds it, this waits and tries
        again (up to 10 minutes)."""
        for _ in range(120):
            try:
                out = self.run(f"{APT} {args}", check=check)
            except AssertionError as e:
                if _LOCKED not in str(e):
                    raise
            else:
                if _LOCKED not in out:
                    return out
            time.sleep(5)
        return self.run(f"{APT} {args}", check=check)

    def installed(self, package: str) -> bool:
        out = self.run(f"dpkg-query -W -f='${{Status}}' {shlex.quote(package)} 2>/dev/null || true")
        return out.strip() == "install ok installed"

    def modules(self, kver: str, stem: str) -> list[Path]:
        """Files named STEM.ko[.xz|…] anywhere under /lib/modules/KVER."""
        base = self.root / "lib/modules" / kver
        return sorted(p for p in base.rglob(f"{stem}.ko*")) if base.is_dir() else []

    def trust_local_cas(self) -> None:
        """The machine's own certificate authorities in the chroot's trust store (pip and
        git reach the registries through what the machine trusts)."""
        self.run("update-ca-certificates >/dev/null 2>&1")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
