#!/usr/bin/env python3
"""Benchmark: one-file edit rebuild of an 8-file module on the clang ThinLTO tree.

Four ways, each timed over --rounds edits (median):
  A  fresh build dir, no cache   (what DKMS does: a new copy of the sources every build)
  B  fresh build dir, cache      (the ThinLTO backend of the 7 unchanged files is a cache hit)
  C  kept build dir, no cache    (make recompiles one file; lld's backend still redoes all 8)
  D  kept build dir, cache       (both)
and prints the ratios. Usage: bench/thinlto_rebuild.py [--kernel-dir DIR] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_module(src: Path, files: int, functions: int) -> None:
    src.mkdir(parents=True)
    objs = " ".join(f"part{i}.o" for i in range(files))
    (src / "Kbuild").write_text(f"obj-m := benchmod.o\nbenchmod-y := {objs}\n")
    for i in range(files):
        (src / f"part{i}.c").write_text(part_source(i, functions, edit=0))


def part_source(i: int, functions: int, edit: int) -> str:
    body = [
        "// SPDX-License-Identifier: GPL-2.0",
        "#include <linux/module.h>",
        "#include <linux/kernel.h>",
        "#include <linux/string.h>",
    ]
    for f in range(functions):
        body.append(f"""
noinline int bench_{i}_{f}(const u8 *buf, int len)
{{
	u32 h = {f * 2654435761 % 4294967291 + edit}u;
	int j, k;
	for (j = 0; j < len; j++) {{
		h ^= buf[j]; h *= 16777619u;
		switch ((h >> 7) & 7) {{
		case 0: h += j * {f + 3}; break;
		case 1: h ^= h >> {f % 13 + 1}; break;
		case 2: for (k = 0; k < (j & 3); k++) h = (h << 5) | (h >> 27); break;
		case 3: h -= {i + f}; break;
		default: h = ~h + {edit}; break;
		}}
	}}
	return (int)h;
}}
EXPORT_SYMBOL_GPL(bench_{i}_{f});""")
    if i == 0:
        body.append('MODULE_LICENSE("GPL");')
    return "\n".join(body) + "\n"


def extmod(root: Path, src: Path, kdir: str, cache: str) -> float:
    started = time.monotonic()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "extmod",
            "--root",
            str(root),
            "-q",
            "--json",
            "build",
            str(src),
            "--kernel-dir",
            kdir,
            "--thinlto-cache",
            cache,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    if res.returncode != 0:
        raise SystemExit(f"bench: build failed: {res.stderr.strip()}")
    return time.monotonic() - started


def scenario(
    work: Path, kdir: str, files: int, functions: int, rounds: int, keep: bool, cache: str
) -> float:
    root = work / f"root-{keep}-{cache}"
    src = work / f"src-{keep}-{cache}" / "benchmod"
    make_module(src, files, functions)
    extmod(root, src, kdir, cache)  # first build: fills the build dir and the cache
    times = []
    for r in range(1, rounds + 1):
        (src / "part0.c").write_text(part_source(0, functions, edit=r))
        if not keep:
            shutil.rmtree(root / "var/lib/extmod/build")
        times.append(extmod(root, src, kdir, cache))
    return statistics.median(times)


def default_kernel_dir() -> str:
    manifest = Path(os.environ.get("EXTMOD_TEST_CACHE", "/var/cache/extmod-tests")) / "trees.json"
    if not manifest.exists():
        raise SystemExit(f"bench: {manifest} missing: run scripts/test.sh or give --kernel-dir")
    return str(json.loads(manifest.read_text())["thinlto"]["build"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel-dir", help="a prepared clang ThinLTO tree")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--functions", type=int, default=150, help="functions per file")
    args = ap.parse_args()
    kdir = args.kernel_dir or default_kernel_dir()
    with tempfile.TemporaryDirectory(prefix="extmod-bench-") as tmp:
        work = Path(tmp)
        t = {}
        for label, keep, cache in (
            ("A", False, "off"),
            ("B", False, "on"),
            ("C", True, "off"),
            ("D", True, "on"),
        ):
            t[label] = scenario(work, kdir, args.files, args.functions, args.rounds, keep, cache)
    print(
        f"ThinLTO one-file-edit rebuild, {args.files} files x {args.functions} functions, "
        f"median of {args.rounds}, {os.cpu_count()} CPUs"
    )
    print(f"{'case':<38} {'seconds':>8}")
    names = {
        "A": "fresh build dir, no cache (DKMS-like)",
        "B": "fresh build dir, cache",
        "C": "kept build dir, no cache",
        "D": "kept build dir, cache",
    }
    for k in "ABCD":
        print(f"{k} {names[k]:<36} {t[k]:>8.2f}")
    print(f"ratio cache, fresh build dir  A/B: {t['A'] / t['B']:.2f}x")
    print(f"ratio cache, kept build dir   C/D: {t['C'] / t['D']:.2f}x")
    print(f"ratio kept dir + cache vs A   A/D: {t['A'] / t['D']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
