#!/usr/bin/env python3
"""extmod and Debian's dkms 3.0.10 side by side, in one run, in private trees (issue 4).

Each tool runs in its own mount namespace (``unshare -m``) where a tmpfs over /lib/modules
holds only KVER/build links to the kernel trees and tmpfs over /var/lib/dkms and /etc/dkms
takes dkms's fixed paths; dkms gets --dkmstree/--sourcetree/--installtree, extmod --root.
Nothing is written outside WORK. Cases:

  a  autoinstall of Debian's 12 DKMS packages for two kernels (the gcc headers and the
     clang ThinLTO defconfig tree); the ideal is the CPU seconds of the build's processes
     (compilers, make, modpost, ld) divided by the cores
  b  autoinstall again with nothing changed
  c  status with 100 registered package versions x 4 kernels (synthetic packages whose
     MAKE copies a hello.ko prebuilt for each kernel, so setup is fast for both tools)
  d  uninstall and remove of 600 installed (package, kernel) pairs (150 x 4)
  e  the ThinLTO one-file-edit rebuild with and without the cache (extmod alone: dkms has
     no cache to compare; bench/thinlto_rebuild.py)
  f  kernel ABI update: autoinstall of the 12 packages onto Debian's current 6.1 ABI after
     the previous ABI was built, with ccache ([build] launcher) against a root without it
  g  second host: the same kernel on a fresh root at the same path sharing a Redis cache
     (ccache remote storage; a real redis-server on 127.0.0.1) against a cold build; the
     modules compared with the cold build's (code sections) and verified in qemu
  r  reinstall, as dh_dkms's prerm and postinst do it on ``apt-get install --reinstall`` or
     an upgrade whose source did not change: remove --all, add, install on both kernels of
     a, for the 12 packages (after a), and for bookworm's zfs on the gcc kernel: dkms
     compiles again, extmod takes every build from its build store (issue 23)
  g2 second host with the shared build store ([store] url; a real redis-server and
     Debian's nginx with WebDAV on 127.0.0.1): the 12 packages on a host at another root
     against the first host's cold build, next to g (compile cache only)

and extmod's own peak memory (RUSAGE_SELF of its Python process, bench/selfrss.py).
Usage: bench/compare.py [--work DIR] [--skip a,c,e]  (bench/run.sh sets everything up first)
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import thinlto_rebuild  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
import testtrees  # noqa: E402

import parity  # noqa: E402  (the side-by-side harness of the parity test)
from conftest import copy_headers, nginx_server, openssl_pair, redis_server  # noqa: E402

sys.path.insert(0, str(REPO / "src"))
from extmod.store import remote  # noqa: E402

CACHE = parity.CACHE
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GOALS = {
    "a": 0.6,
    "a_ideal": 1.15,
    "b": 0.3,
    "c": 0.2,
    "d": 10.0,
    "e": 1.2,
    "f": 0.35,
    "g": 0.15,
    "r": 0.05,
    "g2": 0.05,
    "rss_mb": 60,
}


@dataclass
class Timed:
    wall: float
    cpu: float  # user + system of the whole process tree
    rc: int


def ns_script(kernels: dict[str, str], sources: dict[str, str] | None = None) -> str:
    """/lib/modules/KVER/build (and KVER/source, Debian's -common tree) for each kernel:
    some packages' Makefiles name them themselves (nvidia's conftest reads the source)."""
    links = "".join(
        f"mkdir -p /lib/modules/{shlex.quote(k)}\n"
        f"ln -s {shlex.quote(t)} /lib/modules/{shlex.quote(k)}/build\n"
        for k, t in kernels.items()
    )
    links += "".join(
        f"ln -s {shlex.quote(t)} /lib/modules/{shlex.quote(k)}/source\n"
        for k, t in (sources or {}).items()
        if k in kernels
    )
    return (
        "set -e\nmount -t tmpfs -o mode=755 extmod-bench /lib/modules\n"
        + links
        + "mkdir -p /var/lib/dkms /etc/dkms\n"
        "mount -t tmpfs -o mode=755 extmod-bench /var/lib/dkms\n"
        "mount -t tmpfs -o mode=755 extmod-bench /etc/dkms\n"
        'exec "$@"\n'
    )


def run_ns(
    kernels: dict[str, str],
    argv: list[str],
    env: dict[str, str],
    log: Path,
    sources: dict[str, str] | None = None,
) -> Timed:
    """argv in a private mount namespace; wall time and the CPU time of its process tree."""
    with open(log, "ab") as out:
        out.write(f"\n$ {shlex.join(argv)}\n".encode())
        out.flush()
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "bash",
                "-c",
                ns_script(kernels, sources),
                "bench-ns",
                *argv,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Timed(wall, usage.ru_utime + usage.ru_stime, proc.returncode)


class Dkms:
    def __init__(
        self,
        base: Path,
        kernels: dict[str, str],
        dkms: str,
        sources: dict[str, str] | None = None,
    ):
        self.base, self.kernels, self.dkms, self.sources = base, kernels, dkms, sources
        self.src, self.tree, self.itree = base / "src", base / "dkms", base / "lib-modules"
        for d in (self.src, self.tree, *(self.itree / k for k in kernels)):
            d.mkdir(parents=True, exist_ok=True)
        self.env = {"PATH": f"{parity.LLVM_BIN}:{PATH}", "LANG": "C.UTF-8", "HOME": str(base)}
        self.log = base / "dkms.log"

    def script(self, lines: list[str]) -> Timed:
        """Several dkms calls in one namespace, as a shell script (one process tree)."""
        common = f"--dkmstree={self.tree} --sourcetree={self.src} --installtree={self.itree}"
        text = "\n".join(f"bash {self.dkms} {line} {common} || true" for line in lines)
        return run_ns(self.kernels, ["bash", "-c", text], self.env, self.log, self.sources)

    def installed(self) -> int:
        return sum(1 for p in self.tree.glob("*/kernel-*") if p.is_symlink())


class Extmod:
    def __init__(self, base: Path, kernels: dict[str, str], sources: dict[str, str] | None = None):
        """``sources``: where ROOT/lib/modules/KVER/source leads (Debian's -common tree;
        zfs's configure wants it)."""
        self.base, self.kernels, self.sources = base, kernels, sources
        self.root = base / "root"
        for kver, tree in kernels.items():
            link = self.root / "lib/modules" / kver / "build"
            link.parent.mkdir(parents=True)
            link.symlink_to(os.path.relpath(tree, link.parent))  # --root re-roots absolute
            if sources and kver in sources:
                (link.parent / "source").symlink_to(os.path.relpath(sources[kver], link.parent))
        (self.root / "etc").mkdir(exist_ok=True)
        shutil.copyfile("/etc/os-release", self.root / "etc/os-release")
        self.env = {
            "PATH": PATH,
            "LANG": "C.UTF-8",
            "HOME": str(base),
            "PYTHONPATH": str(REPO / "src"),
        }
        self.log = base / "extmod.log"
        self.peak_kib = 0

    def run(self, args: list[str]) -> Timed:
        rss = self.base / "rss"
        t = run_ns(
            self.kernels,
            [
                sys.executable,
                str(REPO / "bench/selfrss.py"),
                str(rss),
                "--root",
                str(self.root),
                "-q",
                *args,
            ],
            self.env,
            self.log,
            self.sources,
        )
        if rss.exists():
            self.peak_kib = max(self.peak_kib, int(rss.read_text()))
        return t

    def installed(self) -> int:
        return sum(1 for _ in (self.root / "var/lib/extmod/installed").glob("*/*/*.json"))


def kflags(kernels: dict[str, str]) -> list[str]:
    return [x for k in kernels for x in ("-k", k)]


# -- a, b: the twelve Debian packages ------------------------------------------------------------


def real_packages(trees: dict[str, Any], work: Path, rows: dict[str, Any]) -> None:
    kernels = {
        trees["gcc"]["kver"]: trees["gcc"]["build"],
        trees["defconfig"]["kver"]: trees["defconfig"]["build"],
    }
    dk = Dkms(work / "ab-dkms", kernels, trees["dkms"]["dkms"])
    ids = parity.copy_sources(trees["dkms"]["packages"], dk.src)
    dk.script([f"add -m {n} -v {v}" for n, v in ids.values()])
    ex = Extmod(work / "ab-extmod", kernels)
    parity.copy_sources(trees["dkms"]["packages"], ex.base / "src")
    for src in sorted((ex.base / "src").iterdir()):
        ex.run(["add", str(src)])
    da = dk.script([f"autoinstall -k {k}" for k in kernels])
    ea = ex.run(["autoinstall", *kflags(kernels)])
    cores = os.cpu_count() or 1
    rows["a"] = {
        "dkms": da.wall,
        "extmod": ea.wall,
        "dkms_cpu": da.cpu,
        "extmod_cpu": ea.cpu,
        "ideal": ea.cpu / cores,
        "dkms_pairs": dk.installed(),
        "extmod_pairs": ex.installed(),
        "pairs": len(ids) * len(kernels),
    }
    db = dk.script([f"autoinstall -k {k}" for k in kernels])
    eb = ex.run(["autoinstall", *kflags(kernels)])
    rows["b"] = {"dkms": db.wall, "extmod": eb.wall}
    rows["r"] = reinstall(dk, ex, ids, kernels)
    rows["peak_kib"] = max(rows.get("peak_kib", 0), ex.peak_kib)


def reinstall(
    dk: Dkms, ex: Extmod, ids: dict[str, tuple[str, str]], kernels: dict[str, str]
) -> dict[str, Any]:
    """What apt does to a -dkms package on --reinstall (dh_dkms: the prerm's ``dkms remove
    --all``, the postinst's add and install for each kernel), for every package at once."""
    before = (dk.installed(), ex.installed())
    dr = dk.script(
        [f"remove -m {n} -v {v} --all" for n, v in ids.values()]
        + [f"add -m {n} -v {v}" for n, v in ids.values()]
        + [f"install -m {n} -v {v} -k {k}" for n, v in ids.values() for k in kernels]
    )
    er = ex.run(["remove", "--all", *(n for n, _ in ids.values())])
    for src in sorted((ex.base / "src").iterdir()):
        er.wall += ex.run(["add", str(src)]).wall
    for name, _ in ids.values():  # one install per package, as each postinst runs one
        er.wall += ex.run(["install", name, *kflags(kernels)]).wall
    return {
        "dkms": dr.wall,
        "extmod": er.wall,
        "before": before,
        "after": (dk.installed(), ex.installed()),
        "packages": len(ids),
        "kernels": len(kernels),
    }


def zfs_reinstall(trees: dict[str, Any], work: Path, rows: dict[str, Any]) -> None:
    """r for bookworm's zfs 2.1 on the gcc kernel: installed by both tools, then
    reinstalled as apt does."""
    new = trees["gcc"]
    kernels = {new["kver"]: new["build"]}
    sources = {new["kver"]: debian_source(new["kver"], new["build"])}
    src = Path(trees["zfs"]["bookworm"]["src"])
    dk = Dkms(work / "rz-dkms", kernels, trees["dkms"]["dkms"], sources)
    shutil.copytree(src, dk.src / src.name, symlinks=True)
    ids = {"zfs-dkms": parity._identify(src)}
    name, version = ids["zfs-dkms"]
    dk.script([f"add -m {name} -v {version}", f"install -m {name} -v {version} -k {new['kver']}"])
    ex = _host(work / "rz-extmod", kernels, src, {})
    ex.run(["install", name, "-k", new["kver"]])
    rows["rz"] = reinstall(dk, ex, ids, kernels)


# -- c, d: synthetic packages ----------------------------------------------------------------


def synthetic_kernels(trees: dict[str, Any], work: Path) -> dict[str, str]:
    """The gcc headers and three copies of them under other releases."""
    base = trees["gcc"]["build"]
    kernels = {trees["gcc"]["kver"]: base}
    for i in range(1, 4):
        kver = trees["gcc"]["kver"].replace("-amd64", f"-bench{i}-amd64")
        copy = work / "kernels" / f"linux-headers-{kver}"
        copy_headers(Path(base), copy)
        uts = copy / "include/generated/utsrelease.h"
        uts.unlink()
        uts.write_text(f'#define UTS_RELEASE "{kver}"\n')
        kernels[kver] = str(copy)
    return kernels


def synthetic_sources(dest: Path, names: list[str], kos: dict[str, Path]) -> None:
    """Packages whose MAKE copies the hello.ko built for the kernel at hand (its vermagic
    must be that kernel's: extmod's load check refuses any other)."""
    for name in names:
        d = dest / f"{name}-1.0"
        d.mkdir(parents=True)
        for kver, ko in kos.items():
            shutil.copyfile(ko, d / f"prebuilt-{kver}.ko")
        (d / "dkms.conf").write_text(
            f'PACKAGE_NAME="{name}"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="{name}"\n'
            f'DEST_MODULE_LOCATION[0]="/updates"\n'
            f'MAKE[0]="cp prebuilt-${{kernelver}}.ko {name}.ko"\n'
            f'CLEAN="rm -f {name}.ko"\nAUTOINSTALL="yes"\n'
        )


def prebuilt_hello(kernels: dict[str, str], work: Path) -> dict[str, Path]:
    kos = {}
    for kver, tree in kernels.items():
        out = work / "prebuilt" / kver
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "extmod",
                "--root",
                str(work / "prebuilt-root"),
                "-q",
                "build",
                str(REPO / "examples/hello"),
                "--kernel-dir",
                tree,
                "-o",
                str(out),
            ],
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise SystemExit(f"bench: hello build failed: {res.stderr.strip()}")
        kos[kver] = out / "hello.ko"
    return kos


def synthetic(
    trees: dict[str, Any], work: Path, rows: dict[str, Any], counts: tuple[int, int]
) -> None:
    kernels = synthetic_kernels(trees, work)
    ko = prebuilt_hello(kernels, work)
    first = [f"synth{i:03d}" for i in range(counts[0])]
    more = [f"synth{i:03d}" for i in range(counts[0], counts[0] + counts[1])]
    dk = Dkms(work / "cd-dkms", kernels, trees["dkms"]["dkms"])
    ex = Extmod(work / "cd-extmod", kernels)
    setup: dict[str, float] = {"dkms": 0.0, "extmod": 0.0}
    for batch in (first, more):
        synthetic_sources(dk.src, batch, ko)
        synthetic_sources(ex.base / "src", batch, ko)
        setup["dkms"] += dk.script(
            [f"add -m {n} -v 1.0" for n in batch] + [f"autoinstall -k {k}" for k in kernels]
        ).wall
        started = time.monotonic()
        for n in batch:
            ex.run(["add", str(ex.base / "src" / f"{n}-1.0")])
        setup["extmod"] += time.monotonic() - started
        setup["extmod"] += ex.run(["autoinstall", *kflags(kernels)]).wall
        if batch is first:
            dc = dk.script(["status"])
            ec = ex.run(["status"])
            rows["c"] = {
                "dkms": dc.wall,
                "extmod": ec.wall,
                "versions": len(first),
                "kernels": len(kernels),
                "dkms_pairs": dk.installed(),
                "extmod_pairs": ex.installed(),
            }
    pairs = (dk.installed(), ex.installed())
    dd = dk.script([f"remove -m {n} -v 1.0 --all" for n in first + more])
    ed = ex.run(["remove", "--all", *(first + more)])
    rows["d"] = {
        "dkms": dd.wall,
        "extmod": ed.wall,
        "dkms_pairs": pairs[0],
        "extmod_pairs": pairs[1],
        "dkms_left": dk.installed(),
        "extmod_left": ex.installed(),
        "setup": setup,
    }
    rows["peak_kib"] = max(rows.get("peak_kib", 0), ex.peak_kib)


# -- e: ThinLTO rebuild ------------------------------------------------------------------------


def thinlto(trees: dict[str, Any], work: Path, rows: dict[str, Any]) -> None:
    """On the tiny 6.1 tree and on the tiny 6.12 one (the generation whose kbuild has no
    ThinLTO cache at all)."""
    for row, tree in (("e", "thinlto"), ("e612", "thinlto612"), ("e73", "thinlto73")):
        kdir = trees[tree]["build"]
        t = {
            label: thinlto_rebuild.scenario(work / row, kdir, 8, 150, 3, keep, cache)
            for label, keep, cache in (
                ("fresh_off", False, "off"),
                ("fresh_on", False, "on"),
                ("kept_off", True, "off"),
                ("kept_on", True, "on"),
            )
        }
        t["kver"] = trees[tree]["kver"]
        rows[row] = t


# -- f, g: a compile cache across kernel ABIs and across hosts -------------------------------


def _ccache_stats(ccache_dir: Path) -> dict[str, int]:
    out = subprocess.run(
        ["ccache", "--print-stats"],
        env={"CCACHE_DIR": str(ccache_dir), "PATH": PATH},
        capture_output=True,
        text=True,
    ).stdout
    return {k: int(v) for k, v in (x.split("\t") for x in out.splitlines()) if v.isdigit()}


def _hit_rate(stats: dict[str, int]) -> tuple[int, int]:
    hits = sum(stats.get(k, 0) for k in ("direct_cache_hit", "preprocessed_cache_hit"))
    return hits, hits + stats.get("cache_miss", 0)


def _packaged(trees: dict[str, Any], base: Path, kernels: dict[str, str]) -> Extmod:
    ex = Extmod(base, kernels)
    parity.copy_sources(trees["dkms"]["packages"], ex.base / "src")
    for src in sorted((ex.base / "src").iterdir()):
        ex.run(["add", str(src)])
    return ex


def abi_update(trees: dict[str, Any], work: Path, rows: dict[str, Any]) -> None:
    old, new = trees["oldabi"], trees["gcc"]
    cold = _packaged(trees, work / "f-cold", {new["kver"]: new["build"]})
    t_cold = cold.run(["autoinstall", "-k", new["kver"]])
    cached = _packaged(
        trees, work / "f-cache", {old["kver"]: old["build"], new["kver"]: new["build"]}
    )
    ccache_dir = work / "f-ccache"
    cached.env |= {"EXTMOD_LAUNCHER": "ccache", "CCACHE_DIR": str(ccache_dir)}
    t_old = cached.run(["autoinstall", "-k", old["kver"]])
    before = _ccache_stats(ccache_dir)
    t_new = cached.run(["autoinstall", "-k", new["kver"]])
    after = _ccache_stats(ccache_dir)
    hits, calls = (a - b for a, b in zip(_hit_rate(after), _hit_rate(before), strict=True))
    rows["f"] = {
        "old": old["kver"],
        "new": new["kver"],
        "warm_old": t_old.wall,
        "cold": t_cold.wall,
        "cached": t_new.wall,
        "hits": hits,
        "calls": calls,
        "cold_pairs": cold.installed(),
        "cached_pairs": cached.installed(),
    }
    rows["peak_kib"] = max(rows.get("peak_kib", 0), cold.peak_kib, cached.peak_kib)


def second_host(trees: dict[str, Any], work: Path, rows: dict[str, Any]) -> None:
    new = trees["gcc"]
    kernels = {new["kver"]: new["build"]}
    host = work / "g-host"
    with redis_server(work / "redis") as url:
        env = {"EXTMOD_LAUNCHER": "ccache", "EXTMOD_CACHE_URL": url}
        first = _packaged(trees, host, kernels)
        first.env |= env | {"CCACHE_DIR": str(host / "ccache")}
        t_first = first.run(["autoinstall", "-k", new["kver"]])
        shutil.rmtree(host)  # the first host is gone: the second starts from nothing
        second = _packaged(trees, host, kernels)
        second.env |= env | {"CCACHE_DIR": str(host / "ccache")}
        t_second = second.run(["autoinstall", "-k", new["kver"]])
        stats = _ccache_stats(host / "ccache")
    same, differ = _compare_modules(work / "f-cold/root", host / "root", new["kver"])
    _kernel_modules(new["kver"], host / "root", work)
    results = _verify(second, new)
    rows["g"] = {
        "first": t_first.wall,
        "second": t_second.wall,
        "remote_hits": stats.get("remote_storage_hit", 0),
        "misses": stats.get("cache_miss", 0),
        "same": same,
        "differ": differ,
        "verified": results,
    }


def store_host(trees: dict[str, Any], work: Path, rows: dict[str, Any]) -> None:
    """g2: host A builds the 12 packages cold and uploads each build to a shared store
    (Redis); the objects are copied to a WebDAV store (nginx) as they are; host B (Redis)
    and host C (WebDAV), each at another root with the fleet's signing key, install them."""
    new = trees["gcc"]
    kernels = {new["kver"]: new["build"]}
    key, cert = openssl_pair(work / "g2-keys")

    def host(where: Path, url: str) -> Extmod:
        ex = _packaged(trees, where, kernels)
        conf = ex.root / "etc/extmod/config.toml"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(f'[sign]\nkey = "{key}"\ncert = "{cert}"\n[store]\nurl = "{url}"\n')
        return ex

    with (
        redis_server(work / "g2-redis") as redis_url,
        nginx_server(trees["nginx"]["binary"], work / "g2-nginx") as dav_url,
    ):
        a = host(work / "g2-a", redis_url)
        t_a = a.run(["autoinstall", "-k", new["kver"]])
        objects = sorted(a.root.glob("var/lib/extmod/store/??/*"))
        red, dav = remote.engine(redis_url, 30), remote.engine(dav_url, 30)
        for obj in objects:
            k = "extmod-store-1-" + obj.name
            data = red.get(k)
            if data is not None:
                dav.put(k, data)
        b = host(work / "g2-b", redis_url)
        t_b = b.run(["autoinstall", "-k", new["kver"]])
        c = host(work / "g2-c", dav_url)
        t_c = c.run(["autoinstall", "-k", new["kver"]])
    same_b, differ_b = _compare_modules(a.root, b.root, new["kver"])
    same_c, differ_c = _compare_modules(a.root, c.root, new["kver"])
    rows["g2"] = {
        "cold": t_a.wall,
        "redis": t_b.wall,
        "webdav": t_c.wall,
        "objects": len(objects),
        "pairs": (a.installed(), b.installed(), c.installed()),
        "same": (same_b, same_c),
        "differ": (differ_b, differ_c),
    }


# -- h: zfs and an NVIDIA package, the f and g ways -------------------------------------------


def big_packages(
    trees: dict[str, Any], work: Path, rows: dict[str, Any], names: tuple[str, ...]
) -> None:
    """For zfs (bookworm's 2.1) and nvidia-kernel-dkms (535), each alone: a cold build on
    the current ABI without a cache; a host whose ccache (local and a shared Redis) is
    warm from the old ABI builds the current one (f); then that host is gone and a fresh
    one at the same path builds the current ABI from the shared cache alone (g)."""
    every = {"zfs": trees["zfs"]["bookworm"]["src"], "nvidia": trees["nvidia"]["src"]}
    for name in names:
        rows.setdefault("h", {})[name] = _big_package(
            trees, Path(every[name]), work / f"h-{name}", rows
        )


def _host(where: Path, kernels: dict[str, str], src: Path, env: dict[str, str]) -> Extmod:
    """A root with ``kernels`` (and their -common source trees) and ``src`` added."""
    ex = Extmod(where, kernels, {k: debian_source(k, b) for k, b in kernels.items()})
    ex.env |= env
    shutil.copytree(src, ex.base / "src" / src.name, symlinks=True)
    ex.run(["add", str(ex.base / "src" / src.name)])
    return ex


def _big_package(trees: dict[str, Any], src: Path, base: Path, rows: dict[str, Any]) -> Any:
    old, new = trees["oldabi"], trees["gcc"]
    cold = _host(base / "cold", {new["kver"]: new["build"]}, src, {})
    t_cold = cold.run(["autoinstall", "-k", new["kver"]])
    row: dict[str, Any] = {"cold": t_cold.wall}
    ccache_dir = base / "host" / "ccache"
    with redis_server(base / "redis") as url:
        env = {"EXTMOD_LAUNCHER": "ccache", "EXTMOD_CACHE_URL": url, "CCACHE_DIR": str(ccache_dir)}
        both = {old["kver"]: old["build"], new["kver"]: new["build"]}
        first = _host(base / "host", both, src, env)
        row["old"] = first.run(["autoinstall", "-k", old["kver"]]).wall
        before = _ccache_stats(ccache_dir)
        row["f"] = first.run(["autoinstall", "-k", new["kver"]]).wall
        after = _ccache_stats(ccache_dir)
        row["f_hits"], row["f_calls"] = (
            a - b for a, b in zip(_hit_rate(after), _hit_rate(before), strict=True)
        )
        row["f_same"], row["f_differ"] = _compare_modules(cold.root, first.root, new["kver"])
        first_pairs = first.installed()
        shutil.rmtree(base / "host")  # the first host is gone: the second starts empty
        second = _host(base / "host", {new["kver"]: new["build"]}, src, env)
        row["g"] = second.run(["autoinstall", "-k", new["kver"]]).wall
        stats = _ccache_stats(ccache_dir)
    row["g_remote_hits"] = stats.get("remote_storage_hit", 0)
    row["g_misses"] = stats.get("cache_miss", 0)
    row["g_same"], row["g_differ"] = _compare_modules(cold.root, second.root, new["kver"])
    row["pairs"] = (cold.installed(), first_pairs, second.installed())
    _kernel_modules(new["kver"], second.root, base)
    row["verified"] = _verify(second, new)
    rows["peak_kib"] = max(rows.get("peak_kib", 0), cold.peak_kib, second.peak_kib)
    return row


def debian_source(kver: str, build: str) -> str:
    """The -common tree Debian's one-line Makefile stub of ``build`` includes from."""
    stub = (Path(build) / "Makefile").read_text().split()
    return str(Path(stub[-1]).parent) if stub[:1] == ["include"] else build


def _verify(ex: Extmod, kernel: dict[str, str]) -> dict[str, int]:
    """extmod verify of what ``ex`` installed on Debian's vmlinuz: rows counted by result."""
    verified = subprocess.run(
        [sys.executable, "-m", "extmod", "--root", str(ex.root), "--json", "verify",
         "--image", kernel["vmlinuz"], "-k", kernel["kver"], "--accel", "tcg"],
        env={**ex.env},
        capture_output=True,
        text=True,
    )  # fmt: skip
    results: dict[str, int] = {}
    if verified.stdout.strip():
        for k in json.loads(verified.stdout)["kernels"]:
            for r in k["rows"]:
                key = "no device" if r.get("no_device") else r["result"]
                results[key] = results.get(key, 0) + 1
    return results


def _kernel_modules(kver: str, root: Path, work: Path) -> None:
    """The kernel's own modules (Debian's linux-image, unpacked) into the root, as on a
    system, so verify loads each module's in-tree dependencies too; depmod again."""
    debs = work / "image"
    debs.mkdir(exist_ok=True)
    deb = testtrees.apt_download(f"linux-image-{kver}", debs)
    unpacked = work / "image-x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    src = unpacked / "lib/modules" / kver / "kernel"
    shutil.copytree(src, root / "lib/modules" / kver / "kernel", dirs_exist_ok=True)
    for f in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (unpacked / "lib/modules" / kver / f).is_file():
            shutil.copyfile(unpacked / "lib/modules" / kver / f, root / "lib/modules" / kver / f)
    subprocess.run(["depmod", "-b", str(root), kver], check=True)


def _compare_modules(a_root: Path, b_root: Path, kver: str) -> tuple[int, list[str]]:
    """Modules of two roots compared by their code (.text and .rodata) and their
    srcversion (modpost's sum of the sources the .cmd files list: a cache hit that lost a
    depfile would change it), where they carry one."""
    same, differ = 0, []
    for a in sorted((a_root / "lib/modules" / kver).rglob("*.ko*")):
        b = b_root / a.relative_to(a_root)
        if not b.exists():
            differ.append(f"{a.name} (missing)")
        elif _code(a) != _code(b):
            differ.append(a.name)
        elif srcversion(a) != srcversion(b):
            differ.append(f"{a.name} (srcversion)")
        else:
            same += 1
    return same, differ


def srcversion(ko: Path) -> str:
    return subprocess.run(
        ["modinfo", "-F", "srcversion", str(ko)], capture_output=True, text=True, check=True
    ).stdout.strip()


def _code(ko: Path) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        src = ko
        if ko.suffix == ".xz":
            src = Path(tmp) / "m.ko"
            src.write_bytes(lzma.decompress(ko.read_bytes()))
        out = Path(tmp) / "code.bin"
        subprocess.run(
            ["objcopy", "-O", "binary", "-j", ".text", "-j", ".rodata", str(src), str(out)],
            check=True,
        )
        return out.read_bytes()


# -- the table ---------------------------------------------------------------------------------


def table(rows: dict[str, Any]) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    out = [
        f"extmod vs Debian dkms 3.0.10, {os.cpu_count()} CPUs, "
        f"{os.uname().release}, {time.strftime('%Y-%m-%d')}",
        "",
        "| case | dkms | extmod | extmod/dkms | goal | |",
        "|---|---|---|---|---|---|",
    ]
    if "a" in rows:
        a = rows["a"]
        r = a["extmod"] / a["dkms"]
        out.append(
            f"| a autoinstall 12 pkgs x 2 kernels ({a['dkms_pairs']} / "
            f"{a['extmod_pairs']} of {a['pairs']} pairs installed) | {a['dkms']:.1f} s | "
            f"{a['extmod']:.1f} s | {r:.2f} | <= {GOALS['a']} | "
            f"{verdict(r <= GOALS['a'])} |"
        )
        ri = a["extmod"] / a["ideal"]
        out.append(
            f"| a' ideal: {a['extmod_cpu']:.1f} CPU s / {os.cpu_count()} cores "
            f"(dkms used {a['dkms_cpu']:.1f} CPU s) | | {a['ideal']:.1f} s | "
            f"extmod/ideal {ri:.2f} | <= {GOALS['a_ideal']} | "
            f"{verdict(ri <= GOALS['a_ideal'])} |"
        )
    if "b" in rows:
        b = rows["b"]
        out.append(
            f"| b autoinstall again, nothing changed | {b['dkms']:.2f} s | "
            f"{b['extmod']:.3f} s | {b['extmod'] / b['dkms']:.3f} | <= {GOALS['b']} s | "
            f"{verdict(b['extmod'] <= GOALS['b'])} |"
        )
    for key, what in (("r", "12 pkgs x 2 kernels"), ("rz", "zfs 2.1, 1 kernel")):
        if key in rows:
            r = rows[key]
            ratio = r["extmod"] / r["dkms"]
            out.append(
                f"| {key} reinstall (remove --all, add, install), {what}; installed "
                f"before/after: dkms {r['before'][0]}/{r['after'][0]}, extmod "
                f"{r['before'][1]}/{r['after'][1]} | {r['dkms']:.1f} s | {r['extmod']:.1f} s | "
                f"{ratio:.3f} | <= {GOALS['r']} | {verdict(ratio <= GOALS['r'])} |"
            )
    if "c" in rows:
        c = rows["c"]
        out.append(
            f"| c status, {c['versions']} versions x {c['kernels']} kernels "
            f"({c['dkms_pairs']} / "
            f"{c['extmod_pairs']} installed) | {c['dkms']:.2f} s | {c['extmod']:.3f} s | "
            f"{c['extmod'] / c['dkms']:.4f} ({c['dkms'] / c['extmod']:.0f}x faster) | "
            f"<= {GOALS['c']} s | {verdict(c['extmod'] <= GOALS['c'])} |"
        )
    if "d" in rows:
        d = rows["d"]
        ok = d["extmod"] <= GOALS["d"] and d["extmod_left"] == 0
        out.append(
            f"| d uninstall + remove of {d['dkms_pairs']} / {d['extmod_pairs']} pairs "
            f"(left: {d['dkms_left']} / {d['extmod_left']}) | {d['dkms']:.1f} s | "
            f"{d['extmod']:.2f} s | {d['extmod'] / d['dkms']:.3f} | <= {GOALS['d']} s | "
            f"{verdict(ok)} |"
        )
    for row in ("e", "e612", "e73"):
        if row not in rows:
            continue
        e = rows[row]
        kept = e["kept_off"] / e["kept_on"]
        fresh = e["fresh_off"] / e["fresh_on"]
        out.append(
            f"| {row} ThinLTO one-file edit on {e.get('kver', '6.1')}, kept build dir: "
            f"no cache / cache | | "
            f"{e['kept_off']:.2f} s / {e['kept_on']:.2f} s | speedup {kept:.2f}x | "
            f">= {GOALS['e']}x | {verdict(kept >= GOALS['e'])} |"
        )
        out.append(
            f"| {row}' same, fresh build dir (DKMS-like copy) | | "
            f"{e['fresh_off']:.2f} s / {e['fresh_on']:.2f} s | speedup {fresh:.2f}x | | |"
        )
    out += _cache_rows(rows)
    mb = rows.get("peak_kib", 0) / 1024
    out.append(
        f"| peak memory of extmod's own process | | {mb:.1f} MB | | <= "
        f"{GOALS['rss_mb']} MB | {verdict(mb <= GOALS['rss_mb'])} |"
    )
    if "d" in rows:
        s = rows["d"]["setup"]
        out += [
            "",
            f"(setup of c/d, not a goal: dkms {s['dkms']:.0f} s, extmod "
            f"{s['extmod']:.0f} s, for the adds and the installs of d)",
        ]
    return "\n".join(out)


def _cache_rows(rows: dict[str, Any]) -> list[str]:
    out = []
    if "f" in rows:
        f = rows["f"]
        r = f["cached"] / f["cold"]
        rate = f["hits"] / f["calls"] if f["calls"] else 0.0
        out.append(
            f"| f ABI update {f['old']} -> {f['new']}, 12 pkgs ({f['cold_pairs']} / "
            f"{f['cached_pairs']} pairs): no cache / ccache warm from the old ABI | "
            f"{f['cold']:.1f} s | {f['cached']:.1f} s | {r:.2f} (hits {f['hits']}/"
            f"{f['calls']} = {rate:.0%}) | <= {GOALS['f']} | "
            f"{'met' if r <= GOALS['f'] else 'MISSED'} |"
        )
    if "g" in rows:
        g, cold = rows["g"], rows.get("f", {}).get("cold")
        r = g["second"] / cold if cold else float("nan")
        out.append(
            f"| g second host, shared Redis cache: cold build / second host | "
            f"{cold or 0:.1f} s | {g['second']:.1f} s | {r:.2f} (remote hits "
            f"{g['remote_hits']}, misses {g['misses']}; same code {g['same']}, differ "
            f"{len(g['differ'])}; in qemu {g['verified']}) | <= {GOALS['g']} | "
            f"{'met' if r <= GOALS['g'] else 'MISSED'} |"
        )
    if "g2" in rows:
        g2 = rows["g2"]
        for i, engine in enumerate(("redis", "webdav")):
            r = g2[engine] / g2["cold"]
            out.append(
                f"| g2 second host, shared build store ({engine}; {g2['objects']} objects): "
                f"first host cold / second host | {g2['cold']:.1f} s | {g2[engine]:.1f} s | "
                f"{r:.3f} (pairs {g2['pairs'][0]}/{g2['pairs'][i + 1]}; same code "
                f"{g2['same'][i]}, differ {len(g2['differ'][i])}) | <= {GOALS['g2']} | "
                f"{'met' if r <= GOALS['g2'] else 'MISSED'} |"
            )
    for name, h in rows.get("h", {}).items():
        rf, rg = h["f"] / h["cold"], h["g"] / h["cold"]
        rate = h["f_hits"] / h["f_calls"] if h["f_calls"] else 0.0
        pairs = "/".join(str(p) for p in h["pairs"])
        out.append(
            f"| h {name}: ABI update, no cache / ccache warm from the old ABI "
            f"({pairs} pairs) | {h['cold']:.1f} s | {h['f']:.1f} s | {rf:.2f} (hits "
            f"{h['f_hits']}/{h['f_calls']} = {rate:.0%}; same code {h['f_same']}, differ "
            f"{len(h['f_differ'])}) | <= {GOALS['f']} | {'met' if rf <= GOALS['f'] else 'MISSED'} |"
        )
        out.append(
            f"| h {name}: second host, shared Redis cache | {h['cold']:.1f} s | "
            f"{h['g']:.1f} s | {rg:.2f} (remote hits {h['g_remote_hits']}, misses "
            f"{h['g_misses']}; same code {h['g_same']}, differ {len(h['g_differ'])}; in qemu "
            f"{h['verified']}) | <= {GOALS['g']} | {'met' if rg <= GOALS['g'] else 'MISSED'} |"
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="keep the trees here (default: a temp dir)")
    ap.add_argument("--skip", default="", help="cases to leave out, e.g. a,e")
    ap.add_argument(
        "--synthetic",
        default="100,50",
        metavar="N,M",
        help="c with N package versions, d with N+M (default 100,50: 600 pairs)",
    )
    ap.add_argument("--h", default="zfs,nvidia", help="the packages of h (default zfs,nvidia)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (mount namespaces for both tools)")
    manifest = CACHE / "trees.json"
    if not manifest.exists():
        raise SystemExit(f"bench: {manifest} missing: run bench/run.sh")
    trees = json.loads(manifest.read_text())
    skip = set(filter(None, args.skip.split(",")))
    work = args.work or Path(tempfile.mkdtemp(prefix="extmod-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Any] = {}
    try:
        if "a" not in skip:
            real_packages(trees, work, rows)
        if "c" not in skip:
            n, m = (int(x) for x in args.synthetic.split(","))
            synthetic(trees, work, rows, (n, m))
        if "e" not in skip:
            thinlto(trees, work, rows)
        if "g2" not in skip:
            store_host(trees, work, rows)
        if "rz" not in skip:
            zfs_reinstall(trees, work, rows)
        if "f" not in skip:
            abi_update(trees, work, rows)
            if "g" not in skip:
                second_host(trees, work, rows)
        if "h" not in skip:
            big_packages(trees, work, rows, tuple(args.h.split(",")))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            (work / "bench.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
