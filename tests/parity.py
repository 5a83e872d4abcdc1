"""extmod and Debian's dkms side by side on Debian's real DKMS packages (issue 3).

Each tool gets private trees and runs `autoinstall` for one kernel inside its own mount
namespace (`unshare -m`), where a tmpfs over /lib/modules holds just KVER/build leading to
the kernel tree (some packages' Makefiles hard-code /lib/modules/KVER/build, and dkms finds
its kernel there) and a tmpfs over /var/lib/dkms takes dkms's MOK key. Nothing is written
outside ``work``. dkms gets /usr/lib/llvm-16/bin first on PATH, as its users would have to
give it (it runs plain `clang` and `ld.lld`).

Usable as a script: ``python tests/parity.py WORKDIR`` prints the table.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EXTMOD_TEST_CACHE", "/var/cache/extmod-tests"))
LLVM_BIN = "/usr/lib/llvm-16/bin"
# In a dkms make.log: the build died because dkms handed the clang kernel's build to gcc
# (or to a clang/ld.lld that is not on PATH).
TOOLCHAIN_LOST = re.compile(
    r"gcc(?:-\d+)?: error: unrecognized (?:command-line|command line) option"
    r"|unrecognized command-line option '-Q|clang: (?:command )?not found"
    r"|ld\.lld: (?:command )?not found|error: unknown argument|"
    r"gcc(?:-\d+)?: error: .*-mretpoline|fatal error: .*: No such file.*\n.*clang"
)


# The kernels of the table: column name -> the trees.json entry. Debian's headers (6.1 from
# bookworm, 6.12 from bookworm-backports) and the clang-16 ThinLTO defconfig tree of 6.1.
# (The 6.12 ThinLTO tree has its own tests; a fourth column would add 3 minutes to CI.)
KERNELS = {"gcc": "gcc", "clang": "defconfig", "gcc 6.12": "debian612"}

# Columns a package is not tried on, and why (the cell says so).
NOT_TRIED = {
    ("zfs-dkms", "gcc 6.12"): "n/a: zfs 2.1 supports Linux 6.2 at most (2.3 of "
    "backports: test_real_zfs)"
}


def packages(trees: dict[str, Any], kernel: str | None = None) -> dict[str, Any]:
    """The packages of the table: the 12 of DKMS_PACKAGES and bookworm's zfs-dkms; of one
    column, those tried there."""
    every = {**trees["dkms"]["packages"], "zfs-dkms": trees["zfs"]["bookworm"]}
    return {k: v for k, v in every.items() if (k, kernel) not in NOT_TRIED}


def kernel_tree(trees: dict[str, Any], kernel: str) -> tuple[str, str, str | None]:
    """(kver, build tree, source tree or None) of a KERNELS column: Debian's split headers
    have a /lib/modules/KVER/source beside build (zfs's configure needs it)."""
    entry = trees[KERNELS[kernel]]
    source = entry.get("source")
    if source is None and kernel == "gcc":
        source = str(Path("/lib/modules", entry["kver"], "source").resolve())
    return entry["kver"], entry["build"], source


@dataclass
class Cell:
    status: str  # ok, fail, skip
    paths: tuple[str, ...] = ()  # installed .ko files, relative to /lib/modules/KVER
    reason: str = ""
    seconds: float = 0.0

    def text(self) -> str:
        if self.status == "ok":
            return f"ok ({len(self.paths)} .ko)"
        if self.status == "skip":
            return "skipped (BUILD_EXCLUSIVE)"
        if self.status == "n/a":
            return self.reason
        # The first error, with paths cut to their file name: a table cell, not a log.
        short = re.sub(r"\s*\(log: [^)]*\)$", "", self.reason)
        short = re.sub(r"(?:/[^\s/:]+)+/([^\s/:]+)", r"\1", short)
        short = re.sub(r"^MAKE of \S+ for \S+ failed: ", "", short)
        return f"FAILED: {short}"[:100].replace("|", "/")


@dataclass
class Run:
    kernel: str  # a KERNELS column
    kver: str
    tool: str
    cells: dict[str, Cell] = field(default_factory=dict)
    seconds: float = 0.0


def not_tried(run: Run) -> None:
    """The cells of the packages this column does not try."""
    for (deb, kernel), why in NOT_TRIED.items():
        if kernel == run.kernel:
            run.cells[deb] = Cell("n/a", reason=why)


def uncompressed(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Installed paths without .xz/.gz/.zst: dkms 3.0.10 compresses as the modules.dep of
    /lib/modules/KVER says (set_module_suffix), which the private trees here do not have;
    extmod as the kernel's .config says (on a system both give Debian 6.12's .ko.xz)."""
    return tuple(re.sub(r"\.ko\.(xz|gz|zst)$", ".ko", p) for p in paths)


def _ns_script(kver: str, tree: str, source: str | None) -> str:
    return (
        "set -e\n"
        "mount -t tmpfs -o mode=755 extmod-parity /lib/modules\n"
        f"mkdir -p /lib/modules/{kver}\n"
        f"ln -s {shlex.quote(tree)} /lib/modules/{kver}/build\n"
        + (f"ln -s {shlex.quote(source)} /lib/modules/{kver}/source\n" if source else "")
        + "mkdir -p /var/lib/dkms /etc/dkms\n"
        "mount -t tmpfs -o mode=755 extmod-parity /var/lib/dkms\n"
        "mount -t tmpfs -o mode=755 extmod-parity /etc/dkms\n"
        'exec "$@"\n'
    )


def in_namespace(
    kver: str,
    tree: str,
    argv: list[str],
    env: dict[str, str],
    log: Path,
    quiet: int = 1800,
    source: str | None = None,
) -> int:
    """Run argv in a private mount namespace with /lib/modules/KVER/build → tree (and
    KVER/source → source). No bound on the whole (a zfs build on a loaded machine takes
    what it takes; the lane has its own): the command is stopped only when it has written
    nothing to ``log`` for ``quiet`` seconds, and that is one line naming the step."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "bash",
                "-c",
                _ns_script(kver, tree, source),
                "parity-ns",
                *argv,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        size, last = -1, time.monotonic()
        while proc.poll() is None:
            now_size = log.stat().st_size
            if now_size != size:
                size, last = now_size, time.monotonic()
            elif time.monotonic() - last > quiet:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                step = " ".join(a for a in argv if not a.startswith("--"))[:200]
                raise RuntimeError(f"{step}: nothing written for {quiet} s: stuck (log: {log})")
            time.sleep(0.5)
    return proc.returncode


def copy_sources(packages: dict[str, Any], dest: Path) -> dict[str, tuple[str, str]]:
    """The packages' /usr/src dirs, copied to ``dest``; deb name → (name, version)."""
    dest.mkdir(parents=True, exist_ok=True)
    ids: dict[str, tuple[str, str]] = {}
    for deb, info in packages.items():
        src = Path(info["src"])
        shutil.copytree(src, dest / src.name, symlinks=True)
        ids[deb] = _identify(src)
    return ids


def _identify(src: Path) -> tuple[str, str]:
    out = subprocess.run(
        [
            "bash",
            "-c",
            '. ./dkms.conf >/dev/null 2>&1; printf "%s\\n%s\\n" "$PACKAGE_NAME" "$PACKAGE_VERSION"',
        ],
        cwd=src,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return out[0], out[1]


def run_dkms(trees: dict[str, Any], kernel: str, work: Path) -> Run:
    kver, tree, source = kernel_tree(trees, kernel)
    dk = trees["dkms"]
    base = work / f"dkms-{kernel.replace(' ', '-')}"
    src, dtree, itree = base / "src", base / "dkms", base / "lib-modules"
    ids = copy_sources(packages(trees, kernel), src)
    (itree / kver).mkdir(parents=True)
    dtree.mkdir(parents=True)
    env = {
        "PATH": f"{LLVM_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(base),
    }
    common = [f"--dkmstree={dtree}", f"--sourcetree={src}", f"--installtree={itree}"]
    log = base / "dkms.log"
    started = time.monotonic()
    for name, version in ids.values():
        in_namespace(
            kver,
            tree,
            ["bash", dk["dkms"], "add", "-m", name, "-v", version, *common],
            env,
            log,
            source=source,
        )
    in_namespace(
        kver,
        tree,
        ["bash", dk["dkms"], "autoinstall", "-k", kver, *common],
        env,
        log,
        source=source,
    )
    run = Run(kernel, kver, "dkms", seconds=time.monotonic() - started)
    for deb, (name, version) in ids.items():
        built = dtree / name / version / kver / "x86_64" / "module"
        if built.is_dir():
            names = {p.name for p in built.iterdir()}
            paths = sorted(
                str(p.relative_to(itree / kver))
                for p in (itree / kver).rglob("*")
                if p.name in names and p.is_file()
            )
            run.cells[deb] = Cell(
                "ok" if paths else "fail", tuple(paths), "" if paths else "built but not installed"
            )
            continue
        make_log = dtree / name / version / "build" / "make.log"
        text = log.read_text(errors="replace")
        if re.search(
            rf"{re.escape(name)}.*BUILD_EXCLUSIVE|BUILD_EXCLUSIVE.*{re.escape(name)}"
            rf"|autoinstall on {re.escape(kver)}/x86_64 was skipped for "
            rf"{re.escape(name)}",
            text,
        ) or _excluded_in_log(text, name):
            run.cells[deb] = Cell("skip")
            continue
        reason = "no make.log"
        if make_log.exists():
            mtext = make_log.read_text(errors="replace")
            reason = ("toolchain lost: " if TOOLCHAIN_LOST.search(mtext) else "") + first_error(
                mtext
            )
        run.cells[deb] = Cell("fail", reason=reason)
    not_tried(run)
    return run


def _excluded_in_log(text: str, name: str) -> bool:
    return bool(
        re.search(
            rf"/{re.escape(name)}/[^/]+/[^/]+/[^/]+/dkms\.conf for module "
            rf"{re.escape(name)} includes a BUILD_EXCLUSIVE",
            text,
        )
    )


def first_error(text: str) -> str:
    for pattern in (
        r"^([^\s:]+:\d+(?::\d+)?: (?:fatal )?error: .*)$",
        r"^(.*error: unrecognized.*)$",
        r"^(.*: not found)$",
        r"^(ERROR: .*)$",
        r"^(.*\*\*\* .*)$",
    ):
        m = re.search(pattern, text, re.M)
        if m:
            return m.group(1).strip()
    return "failed"


def run_extmod(trees: dict[str, Any], kernel: str, work: Path) -> Run:
    kver, tree, source = kernel_tree(trees, kernel)
    base = work / f"extmod-{kernel.replace(' ', '-')}"
    root = base / "root"
    link = root / "lib/modules" / kver / "build"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(tree, link.parent))
    if source:
        (link.parent / "source").symlink_to(os.path.relpath(source, link.parent))
    (root / "etc").mkdir()
    shutil.copyfile("/etc/os-release", root / "etc/os-release")
    src = base / "src"
    ids = copy_sources(packages(trees, kernel), src)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(base),
        "PYTHONPATH": str(REPO / "src"),
    }
    log = base / "extmod.log"
    started = time.monotonic()
    for deb in ids:
        pkg_src = src / Path(packages(trees, kernel)[deb]["src"]).name
        in_namespace(
            kver,
            tree,
            [sys.executable, "-m", "extmod", "--root", str(root), "-q", "add", str(pkg_src)],
            env,
            log,
            source=source,
        )
    out = base / "autoinstall.json"
    in_namespace(
        kver,
        tree,
        [
            "bash",
            "-c",
            'exec "$@" > ' + shlex.quote(str(out)),
            "x",
            sys.executable,
            "-m",
            "extmod",
            "--root",
            str(root),
            "--json",
            "autoinstall",
            "-k",
            kver,
        ],
        env,
        log,
        source=source,
    )
    run = Run(kernel, kver, "extmod", seconds=time.monotonic() - started)
    result = json.loads(out.read_text())
    by_ident = {
        o["ident"]: o
        for o in result["outcomes"]
        if o["kver"] == kver and o["action"] in ("installed", "failed", "skipped", "up to date")
    }
    for deb, (name, version) in ids.items():
        o = by_ident.get(f"{name}/{version}")
        rec = root / "var/lib/extmod/installed" / kver / "x86_64" / f"{name}.json"
        if o is None:
            run.cells[deb] = Cell("fail", reason="no outcome reported")
        elif o["action"] == "skipped":
            run.cells[deb] = Cell("skip", reason=o["detail"])
        elif o["action"] == "failed":
            run.cells[deb] = Cell("fail", reason=o["detail"])
        else:
            files = json.loads(rec.read_text())["files"]
            run.cells[deb] = Cell("ok", tuple(sorted(f["path"] for f in files)))
    not_tried(run)
    return run


def table(runs: list[Run], packages: list[str]) -> str:
    cols = [f"{r.kernel} {r.tool}" for r in runs]
    width = max(len(p) for p in packages)
    lines = [
        f"| {'package':<{width}} | " + " | ".join(cols) + " |",
        "|" + "-" * (width + 2) + "|" + "|".join("-" * (len(c) + 2) for c in cols) + "|",
    ]
    for p in packages:
        cells = [r.cells[p].text() for r in runs]
        lines.append(f"| {p:<{width}} | " + " | ".join(cells) + " |")
    lines.append(
        f"| {'wall time':<{width}} | " + " | ".join(f"{r.seconds:.0f} s" for r in runs) + " |"
    )
    return "\n".join(lines)


# What a dkms build runs besides the kernel trees and the package (dkms_key).
TOOL_PACKAGES = ["gcc-12", "clang-16", "lld-16", "llvm-16", "make", "bash", "kmod", "binutils"]


def dkms_key(trees: dict[str, Any], kernel: str) -> str:
    """Everything dkms's run of a column depends on: dkms's version, the packages (their
    unpacked dirs name their versions), the kernel's trees.json entry (its paths carry the
    version and the recipe hash), the compilers and tools it runs, and this file, whose code
    drives dkms."""
    tools = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Version}\n", *TOOL_PACKAGES],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    inputs = {
        "tools": tools,
        "dkms": trees["dkms"]["dkms_version"],
        "packages": packages(trees, kernel),
        "kernel": trees[KERNELS[kernel]],
        "harness": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def dkms_kept(trees: dict[str, Any], kernel: str, work: Path) -> Run:
    """dkms's run of a column, kept in the test cache by its inputs (``dkms_key``): dkms is
    the reference, not what is tested, and for the same inputs it gives the same answer, so
    a warm run reads it back and builds only with extmod; a cold run, or any changed input,
    runs dkms."""
    kept = CACHE / "parity" / f"dkms-{kernel.replace(' ', '-')}-{dkms_key(trees, kernel)}.json"
    if kept.exists():
        (run,) = from_json(json.loads(kept.read_text()))
        return run
    run = run_dkms(trees, kernel, work)
    kept.parent.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_name(kept.name + ".tmp")
    tmp.write_text(json.dumps(to_json([run])))
    tmp.rename(kept)
    return run


def run_all(
    trees: dict[str, Any], work: Path, at_once: bool = False, keep_dkms: bool = False
) -> list[Run]:
    """dkms's run and extmod's for each column, in KERNELS order (dkms first). ``at_once``:
    the two of a column run at the same time, each in its own trees and namespace (dkms
    builds one package at a time and leaves a core idle through configure scripts; the
    test's wall time drops by that, and its wall-time row then counts both at once).
    ``keep_dkms``: dkms's runs come from ``dkms_kept``."""
    dkms = dkms_kept if keep_dkms else run_dkms
    runs: list[Run] = []
    for kernel in KERNELS:
        if not at_once:
            runs += [dkms(trees, kernel, work), run_extmod(trees, kernel, work)]
            continue
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            both = [pool.submit(f, trees, kernel, work) for f in (dkms, run_extmod)]
            runs += [b.result() for b in both]
    return runs


def to_json(runs: list[Run]) -> list[dict[str, Any]]:
    return [
        {
            **{k: v for k, v in vars(r).items() if k != "cells"},
            "cells": {p: vars(c) for p, c in r.cells.items()},
        }
        for r in runs
    ]


def from_json(data: list[dict[str, Any]]) -> list[Run]:
    runs = []
    for r in data:
        cells = {p: Cell(**{**c, "paths": tuple(c["paths"])}) for p, c in r["cells"].items()}
        runs.append(Run(r["kernel"], r["kver"], r["tool"], cells, r["seconds"]))
    return runs


# The last recorded run (``parity.py --record WORKDIR``): the table of docs/dev/parity.md is
# rendered from it (test_docs checks), and the parity test compares each run's outcomes with it.
RECORDED = Path(__file__).with_name("parity-runs.json")
PARITY_DOC = Path(__file__).resolve().parent.parent / "docs" / "dev" / "parity.md"


def _markers(recorded: Path) -> tuple[str, str]:
    return f"<!-- parity table: tests/{recorded.name} -->", f"<!-- end of {recorded.stem} -->"


def recorded(path: Path = RECORDED) -> list[Run]:
    return from_json(json.loads(path.read_text()))


def recorded_table(path: Path = RECORDED) -> str:
    runs = recorded(path)
    return table(runs, list(runs[0].cells))


def readme_table(text: str, path: Path = RECORDED) -> str:
    """The parity table as docs/dev/parity.md has it (between the markers of ``path``)."""
    begin, end = _markers(path)
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def write_readme(path: Path = RECORDED) -> None:
    """The table of the recorded run ``path``, rendered again."""
    begin, end = _markers(path)
    text = PARITY_DOC.read_text()
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    PARITY_DOC.write_text(f"{head}{begin}\n{recorded_table(path)}\n{end}{tail}")


def record(runs: list[Run], path: Path = RECORDED) -> None:
    path.write_text(json.dumps(to_json(runs), indent=1) + "\n")
    write_readme(path)


def outcome_changes(runs: list[Run], before: list[Run]) -> list[str]:
    """Cells whose outcome (status, installed paths; not the error text, whose first line
    depends on make's output order, nor the times) differs from the recorded run."""
    if [(r.kernel, r.tool) for r in runs] != [(r.kernel, r.tool) for r in before]:
        return ["the columns differ"]
    return [
        f"{p} on {r.kernel} {r.tool}: {b.cells[p].status} -> {r.cells[p].status}"
        for r, b in zip(runs, before, strict=True)
        for p in r.cells
        if p not in b.cells
        or (r.cells[p].status, uncompressed(r.cells[p].paths))
        != (b.cells[p].status, uncompressed(b.cells[p].paths))
    ]


def main(argv: list[str]) -> int:
    """``parity.py WORKDIR``: the table, the tools one at a time (the wall-time row
    docs/dev/parity.md quotes). ``parity.py --at-once --keep-dkms --json FILE WORKDIR``: the
    test's lane job (the two tools of a column at once, dkms's runs kept by their inputs; the
    runs as JSON in FILE)."""
    at_once = "--at-once" in argv
    keep_dkms = "--keep-dkms" in argv
    out = Path(argv[argv.index("--json") + 1]) if "--json" in argv else None
    work = Path(argv[-1]).absolute()
    trees = json.loads((CACHE / "trees.json").read_text())
    runs = run_all(trees, work, at_once=at_once, keep_dkms=keep_dkms)
    if out is not None:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(to_json(runs)))
        tmp.rename(out)
    if "--record" in argv:
        record(runs)
    print(table(runs, list(packages(trees))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
