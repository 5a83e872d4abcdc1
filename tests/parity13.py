"""Parity on Debian 13 (issue 21): Debian's dkms 3.2.2 and extmod side by side on trixie's
versions of the parity packages, for trixie's Linux 6.12 headers and trixie-backports'
Linux 7.3 headers (both built with gcc-14: only a trixie userland has that compiler).

Each tool gets a trixie chroot of its own (tests/chroot.py) with both kernels' headers from
apt: one with Debian's ``dkms``, one with extmod's ``.deb`` (which provides dkms 3.2.2).
The packages' ``.deb`` files are unpacked there (``apt-get download`` + ``dpkg-deb -x``, as
the Debian 12 parity does; no maintainer script runs) and what they depend on is installed
(``apt-get satisfy``); each tool's own ``add`` registers them, and ``autoinstall -k KVER``
runs for one kernel at a time; each cell is read after its kernel's run (dkms's make.log is
per package, not per kernel). The two chroots build at the same time; dkms's runs are kept
by their inputs, so a warm run builds with extmod only. apt in these chroots uses a
download dir of its own: this job runs beside the rest of the suite and never waits for
the apt tests' lock.

``python tests/parity13.py [--json FILE] DEB WORKDIR`` prints the table (DEB: extmod's .deb).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from chroot import Chroot
from parity import CACHE, TOOLCHAIN_LOST, Cell, Run, first_error, from_json, table, to_json

# The Debian 12 parity's packages, in trixie's versions, less two whose builds would double
# this job's time (the suite has 30 minutes): zfs (2.3 builds, installs and loads on 6.12
# in test_real_zfs.py) and lttng-modules (about 150 modules per kernel).
PACKAGES = [
    "acpi-call-dkms",
    "v4l2loopback-dkms",
    "xtables-addons-dkms",
    "jool-dkms",
    "ddcci-dkms",
    "dm-writeboost-dkms",
    "evdi-dkms",
    "tp-smapi-dkms",
    "vpoll-dkms",
    "digimend-dkms",
    "iptables-netflow-dkms",
]
# column -> the apt arguments that install its kernel's headers
KERNELS = {
    "trixie 6.12": "linux-headers-amd64",
    "trixie-bp 7.3": "-t trixie-backports linux-headers-amd64",
}


def prepare(trees: dict[str, Any], dest: Path, tool: str, deb: Path) -> Chroot:
    """A trixie chroot with both kernels' headers, the tool, and the packages unpacked in
    /usr/src (their .debs kept in /tmp/debs, their versions in /tmp/debs/versions)."""
    c = Chroot(trees, dest, "chroot13")
    own = CACHE / "parity13-archives"  # apt's download dir for these chroots alone
    (own / "partial").mkdir(parents=True, exist_ok=True)
    c.archives = own
    for args in KERNELS.values():
        c.apt(f"install {args}")
    if tool == "dkms":
        c.apt("install dkms")
    else:
        shutil.copy(deb, c.root / "tmp")
        c.apt(f"install /tmp/{deb.name}")
    c.run(
        "mkdir -p /tmp/debs && cd /tmp/debs && apt-get -q download "
        + " ".join(PACKAGES)
        + " >/dev/null && for d in *.deb; do dpkg-deb -x $d /; done"
        + " && dpkg-deb -W --showformat='${Package} ${Version}\\n' *.deb > versions"
    )
    # what the packages need besides the kernel and dkms (ipt-netflow's configure needs
    # libxtables-dev and pkg-config), as apt would install it with them
    depends = c.run("cd /tmp/debs && for d in *.deb; do dpkg-deb -f $d Depends; done")
    c.apt(f"satisfy {shlex.quote(', '.join(x.strip() for x in depends.splitlines() if x.strip()))}")
    return c


def sources(c: Chroot) -> dict[str, tuple[str, str]]:
    """deb name -> (PACKAGE_NAME, PACKAGE_VERSION) of its /usr/src dir."""
    ids = {}
    for deb in PACKAGES:
        listing = c.run(f"dpkg-deb -c /tmp/debs/{deb}_*.deb | grep -o 'usr/src/[^/]*/dkms.conf'")
        conf = listing.split()[0]
        out = c.run(
            f"cd /{shlex.quote(str(Path(conf).parent))} && . ./dkms.conf >/dev/null 2>&1;"
            ' printf "%s\\n%s\\n" "$PACKAGE_NAME" "$PACKAGE_VERSION"'
        ).split("\n")
        ids[deb] = (out[0], out[1])
    return ids


def kernels(c: Chroot) -> dict[str, str]:
    """column -> its kernel release (6.12 first, then 7.3)."""
    found = sorted(p.parent.name for p in (c.root / "lib/modules").glob("*/build"))
    six = [k for k in found if k.startswith("6.")]
    seven = [k for k in found if k.startswith("7.")]
    assert len(six) == 1 and len(seven) == 1, found
    return {"trixie 6.12": six[0], "trixie-bp 7.3": seven[0]}


def run_dkms(c: Chroot) -> list[Run]:
    ids = sources(c)
    for name, version in ids.values():
        c.run(f"dkms add -m {name} -v {version} >/dev/null 2>&1 || true")
    runs = []
    for column, kver in kernels(c).items():
        started = time.monotonic()
        log = c.run(f"dkms autoinstall -k {kver} 2>&1 || true", timeout=5400)
        run = Run(column, kver, "dkms", seconds=time.monotonic() - started)
        for deb, (name, version) in ids.items():
            run.cells[deb] = _dkms_cell(c, name, version, kver, log)
        runs.append(run)
    return runs


def _dkms_cell(c: Chroot, name: str, version: str, kver: str, log: str) -> Cell:
    built = c.root / "var/lib/dkms" / name / version / kver / "x86_64" / "module"
    if built.is_dir():
        stems = {p.name.split(".ko")[0] for p in built.iterdir()}
        base = c.root / "lib/modules" / kver
        paths = sorted(
            str(p.relative_to(base))
            for p in (base / "updates/dkms").rglob("*.ko*")
            if p.name.split(".ko")[0] in stems
        )
        return Cell("ok", tuple(paths)) if paths else Cell("fail", reason="built, not installed")
    if re.search(rf"{re.escape(name)}/{re.escape(version)}.*BUILD_EXCLUSIVE", log) or re.search(
        rf"autoinstall on {re.escape(kver)}/x86_64 was skipped for {re.escape(name)}", log
    ):
        return Cell("skip")
    make_log = c.root / "var/lib/dkms" / name / version / "build" / "make.log"
    if not make_log.exists():
        return Cell("fail", reason="no make.log")
    text = make_log.read_text(errors="replace")
    return Cell(
        "fail",
        reason=("toolchain lost: " if TOOLCHAIN_LOST.search(text) else "") + first_error(text),
    )


def run_extmod(c: Chroot) -> list[Run]:
    ids = sources(c)
    for name, version in ids.values():
        c.run(f"extmod -q add /usr/src/{name}-{version} 2>&1 || true")
    runs = []
    for column, kver in kernels(c).items():
        started = time.monotonic()
        c.run(f"extmod --json autoinstall -k {kver} > /tmp/autoinstall.json || true", timeout=5400)
        run = Run(column, kver, "extmod", seconds=time.monotonic() - started)
        result = json.loads((c.root / "tmp/autoinstall.json").read_text())
        by_ident = {o["ident"]: o for o in result["outcomes"] if o["kver"] == kver}
        for deb, (name, version) in ids.items():
            run.cells[deb] = _extmod_cell(c, by_ident.get(f"{name}/{version}"), name, kver)
        runs.append(run)
    return runs


def _extmod_cell(c: Chroot, o: dict[str, Any] | None, name: str, kver: str) -> Cell:
    if o is None:
        return Cell("fail", reason="no outcome reported")
    if o["action"] == "skipped":
        return Cell("skip", reason=o["detail"])
    if o["action"] == "failed":
        return Cell("fail", reason=o["detail"])
    rec = c.root / "var/lib/extmod/installed" / kver / "x86_64" / f"{name}.json"
    files = json.loads(rec.read_text())["files"]
    return Cell("ok", tuple(sorted(f["path"] for f in files)))


def dkms_key(c: Chroot) -> str:
    """Everything dkms's runs depend on, read in extmod's chroot (the same archive at the
    same time): dkms's candidate version, the packages' versions, the kernels' releases,
    and this file."""
    inputs = {
        "dkms": c.run("apt-cache policy dkms | grep Candidate").strip(),
        "packages": (c.root / "tmp/debs/versions").read_text(),
        "kernels": kernels(c),
        "harness": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def run_all(trees: dict[str, Any], deb: Path, work: Path) -> list[Run]:
    """extmod's chroot first; dkms's runs are kept in the test cache by their inputs
    (``dkms_key``: dkms is the reference, and for the same inputs gives the same answer),
    else its chroot is prepared too and both build at the same time. The runs in table
    order (per column: dkms, then extmod)."""
    ex = prepare(trees, work / "extmod" / "root", "extmod", deb)
    chroots = [ex]
    try:
        kept = CACHE / "parity" / f"dkms13-{dkms_key(ex)}.json"
        if kept.exists():
            dkms_runs, extmod_runs = from_json(json.loads(kept.read_text())), run_extmod(ex)
        else:
            dk = prepare(trees, work / "dkms" / "root", "dkms", deb)
            chroots.append(dk)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                d, e = pool.submit(run_dkms, dk), pool.submit(run_extmod, ex)
                dkms_runs, extmod_runs = d.result(), e.result()
            kept.parent.mkdir(parents=True, exist_ok=True)
            tmp = kept.with_name(kept.name + ".tmp")
            tmp.write_text(json.dumps(to_json(dkms_runs)))
            tmp.rename(kept)
        (work / "versions").write_text((ex.root / "tmp/debs/versions").read_text())
    finally:
        for c in chroots:
            c.remove()
    return [r for pair in zip(dkms_runs, extmod_runs, strict=True) for r in pair]


def main(argv: list[str]) -> int:
    """``parity13.py [--json FILE] DEB WORKDIR``."""
    out = Path(argv[argv.index("--json") + 1]) if "--json" in argv else None
    deb, work = Path(argv[-2]).absolute(), Path(argv[-1]).absolute()
    trees = json.loads((CACHE / "trees.json").read_text())
    runs = run_all(trees, deb, work)
    if out is not None:
        out.write_text(json.dumps(to_json(runs), indent=1) + "\n")
    print(table(runs, PACKAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
