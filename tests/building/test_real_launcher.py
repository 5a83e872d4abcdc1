"""Issue 16.1, [build] launcher: ccache before the kernel's own compiler in every make of a
build, on Debian's gcc headers and on the clang ThinLTO kernel (whose compile step makes
bitcode; the LTO link stays local with extmod's ThinLTO cache). A build in a fresh build
dir is served from ccache and makes the same modules (srcversion); a unit with .incbin is
never served from it (ccache refuses such units), so a changed blob is always rebuilt."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, extmod, free_port, redis_cli, redis_server

pytestmark = pytest.mark.slow


def ccache_stats(ccache_dir: Path) -> dict[str, int]:
    out = subprocess.run(
        ["ccache", "--print-stats"],
        env={"CCACHE_DIR": str(ccache_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {k: int(v) for k, v in (line.split("\t") for line in out.splitlines()) if v.isdigit()}


def build(root: Path, src: Path, tree: str, out: Path, ccache_dir: Path) -> tuple[Any, str]:
    r = extmod(
        ["--root", root, "--json", "build", src, "--kernel-dir", tree, "-o", out],
        env={"EXTMOD_LAUNCHER": "ccache", "CCACHE_DIR": str(ccache_dir)},
    )
    assert r.rc == 0, r.err
    return r.json(), r.err


def code(ko: Path, tmp: Path) -> bytes:
    """The module's .text and .rodata, as the linker laid them out."""
    out = tmp / f"{ko.parent.name}-{ko.name}.bin"
    subprocess.run(
        ["objcopy", "-O", "binary", "-j", ".text", "-j", ".rodata", str(ko), str(out)],
        check=True,
    )
    return out.read_bytes()


@pytest.mark.parametrize(("tree", "cc"), [("gcc", "gcc-12"), ("thinlto", "clang-16")])
def test_ccache_serves_a_fresh_build_dir(
    trees: dict[str, Any], tmp_path: Path, tree: str, cc: str
) -> None:
    root, ccache_dir = tmp_path / "root", tmp_path / "ccache"
    first, _ = build(root, EXAMPLES / "twofile", trees[tree]["build"], tmp_path / "a", ccache_dir)
    assert f"'CC=ccache {cc}'" in first["reproducer"], first["reproducer"]
    if tree == "thinlto":  # the link: extmod's ld.lld wrapper and its ThinLTO cache
        assert "LD=" in first["reproducer"] and first["thinlto_cache_dir"]
    misses = ccache_stats(ccache_dir)
    assert misses.get("cache_miss", 0) >= 2  # twofile's two units, at least
    assert extmod(["--root", root, "-q", "clean", "--all"]).rc == 0
    second, _ = build(root, EXAMPLES / "twofile", trees[tree]["build"], tmp_path / "b", ccache_dir)
    stats = ccache_stats(ccache_dir)
    hits = stats.get("direct_cache_hit", 0) + stats.get("preprocessed_cache_hit", 0)
    assert hits >= 2, stats
    assert stats.get("cache_miss", 0) == misses.get("cache_miss", 0), (misses, stats)
    a, b = Path(first["modules"][0]), Path(second["modules"][0])
    assert code(a, tmp_path) == code(b, tmp_path) and code(a, tmp_path)  # the same modules


INCBIN_C = """#include <linux/module.h>
MODULE_LICENSE("GPL");
asm(".section .rodata\\n.global extmod_blob\\nextmod_blob:\\n"
    ".incbin \\"" BLOB "\\"\\n.previous\\n");
extern const char extmod_blob[];
static int __init blob_init(void) { pr_info("extmod-blob: %.8s\\n", extmod_blob); return 0; }
module_init(blob_init);
"""


@pytest.mark.parametrize("tree", ["gcc", "thinlto"])
def test_incbin_units_are_never_served_from_ccache(
    trees: dict[str, Any], tmp_path: Path, tree: str
) -> None:
    src = tmp_path / "blob"
    src.mkdir()
    (src / "blob.c").write_text(INCBIN_C)
    (src / "Kbuild").write_text('obj-m := blob.o\nccflags-y += -DBLOB=\\"$(src)/data.bin\\"\n')
    (src / "data.bin").write_bytes(b"VERSION1")
    root, ccache_dir = tmp_path / "root", tmp_path / "ccache"
    first, _ = build(root, src, trees[tree]["build"], tmp_path / "a", ccache_dir)
    assert b"VERSION1" in Path(first["modules"][0]).read_bytes()
    assert ccache_stats(ccache_dir).get("unsupported_code_directive", 0) >= 1
    (src / "data.bin").write_bytes(b"VERSION2")
    assert extmod(["--root", root, "-q", "clean", "--all"]).rc == 0
    second, _ = build(root, src, trees[tree]["build"], tmp_path / "b", ccache_dir)
    data = Path(second["modules"][0]).read_bytes()
    assert b"VERSION2" in data and b"VERSION1" not in data


def cmd_line(root: Path, name: str, unit: str) -> str:
    """kbuild's recorded command for ``unit``.o of an ad hoc build (its .cmd file)."""
    (cmd,) = (root / "var/lib/extmod/build" / name).rglob(f".{unit}.o.cmd")
    return cmd.read_text()


@pytest.mark.parametrize("tree", ["gcc", "thinlto"])
def test_depfiles_of_cache_hits_track_headers(
    trees: dict[str, Any], tmp_path: Path, tree: str
) -> None:
    """kbuild compiles with -Wp,-MMD,<depfile> and fixdep turns the depfile into the .cmd
    make reads next time. On a ccache hit the depfile must be written all the same: here a
    build dir made afresh is all hits, its .cmd still lists the package's own header, and a
    change to that header alone rebuilds the unit (the new value lands in the module)."""
    src = tmp_path / "dep"
    src.mkdir()
    (src / "value.h").write_text('#define EXTMOD_VALUE "FIRST-VALUE"\n')
    (src / "dep.c").write_text(
        '#include <linux/module.h>\n#include "value.h"\nMODULE_LICENSE("GPL");\n'
        "const char extmod_dep_value[] = EXTMOD_VALUE;\n"
    )
    (src / "Kbuild").write_text("obj-m := dep.o\n")
    root, ccache_dir = tmp_path / "root", tmp_path / "ccache"
    build(root, src, trees[tree]["build"], tmp_path / "a", ccache_dir)
    assert extmod(["--root", root, "-q", "clean", "--all"]).rc == 0
    before = ccache_stats(ccache_dir)
    build(root, src, trees[tree]["build"], tmp_path / "b", ccache_dir)
    after = ccache_stats(ccache_dir)
    assert after.get("direct_cache_hit", 0) > before.get("direct_cache_hit", 0), after
    assert after.get("cache_miss", 0) == before.get("cache_miss", 0), (before, after)
    assert "value.h" in cmd_line(root, "dep", "dep")  # fixdep read the hit's depfile
    (src / "value.h").write_text('#define EXTMOD_VALUE "OTHER-VALUE"\n')
    third, _ = build(root, src, trees[tree]["build"], tmp_path / "c", ccache_dir)
    data = Path(third["modules"][0]).read_bytes()
    assert b"OTHER-VALUE" in data and b"FIRST-VALUE" not in data


@pytest.mark.parametrize("tree", ["gcc", "thinlto"])
def test_compiler_probes_give_the_same_flags_through_ccache(
    trees: dict[str, Any], tmp_path: Path, tree: str
) -> None:
    """kbuild probes the compiler and the assembler (cc-option, as-instr: compiles of
    /dev/null that may fail) to pick its flags. Through ccache the probes must answer as
    the compiler does: a unit's recorded command is the same with and without the
    launcher but for the word "ccache"."""
    lines = []
    for launcher in ("", "ccache"):
        root = tmp_path / f"root-{launcher or 'none'}"
        env = {  # the real paths on both sides (the view is test_real_pathmap's)
            "EXTMOD_LAUNCHER": launcher,
            "CCACHE_DIR": str(tmp_path / "ccache"),
            "EXTMOD_MAP_PATHS": "off",
        }
        r = extmod(
            ["--root", root, "build", EXAMPLES / "twofile", "--kernel-dir",
             trees[tree]["build"], "-o", tmp_path / f"out-{launcher or 'none'}"],
            env={k: v for k, v in env.items() if v},
        )  # fmt: skip
        assert r.rc == 0, r.err
        cmd = cmd_line(root, "twofile", "main").splitlines()[0]
        lines.append(cmd.replace(str(root), "ROOT"))
    plain, cached = lines
    assert "ccache " not in plain and "ccache " in cached, (plain, cached)
    assert cached.replace("ccache ", "", 1) == plain
    assert " -f" in plain and " -m" in plain  # kbuild's probed flags are there at all


def test_a_launcher_that_is_not_here_is_named_before_any_build(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    r = extmod(
        ["--root", tmp_path / "root", "build", EXAMPLES / "hello", "--kernel-dir",
         trees["gcc"]["build"], "--launcher", "distcc-not-here"],
    )  # fmt: skip
    assert r.rc == 5, r.err
    assert r.err.strip() == (
        "extmod: error: build.launcher: distcc-not-here not found: apt-get install distcc-not-here"
    )
    assert not (tmp_path / "root/var/lib/extmod/build").exists()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path / "redis") as url:
        yield url


@pytest.mark.parametrize("tree", ["gcc", "thinlto"])
def test_a_second_host_compiles_nothing_with_the_shared_cache(
    trees: dict[str, Any], tmp_path: Path, redis: str, tree: str
) -> None:
    """Two hosts: two independent roots at the same path (as every host of a fleet has
    extmod's layout), the first removed before the second exists; each with its own local
    ccache, both pointed at one Redis. The second host's build is all remote hits."""
    root = tmp_path / "host"
    env = {"EXTMOD_LAUNCHER": "ccache", "EXTMOD_CACHE_URL": redis}

    def build_on_host(out: Path) -> tuple[dict[str, Any], dict[str, int]]:
        r = extmod(
            ["--root", root, "--json", "build", EXAMPLES / "twofile", "--kernel-dir",
             trees[tree]["build"], "-o", out],
            env=env,
        )  # fmt: skip
        assert r.rc == 0, r.err
        return r.json(), ccache_stats(root / "var/lib/extmod/ccache")

    first, stats1 = build_on_host(tmp_path / "a")
    assert stats1.get("cache_miss", 0) >= 2 and stats1.get("remote_storage_hit", 0) == 0
    port = int(redis.rsplit(":", 1)[1])
    assert int(redis_cli(port, "DBSIZE") or 0) >= 2, "nothing reached the shared cache"
    shutil.rmtree(root)  # the first host is gone; the second starts from nothing
    second, stats2 = build_on_host(tmp_path / "b")
    assert stats2.get("cache_miss", 0) == 0, stats2
    assert stats2.get("remote_storage_hit", 0) >= 2, stats2
    a, b = Path(first["modules"][0]), Path(second["modules"][0])
    assert code(a, tmp_path) == code(b, tmp_path)


def test_a_cache_url_needs_a_caching_launcher(trees: dict[str, Any], tmp_path: Path) -> None:
    for env, said in (
        ({"EXTMOD_CACHE_URL": "redis://127.0.0.1:1"}, "needs build.launcher = ccache"),
        ({"EXTMOD_CACHE_URL": "redis://127.0.0.1:1", "EXTMOD_LAUNCHER": "distcc"}, "keeps no"),
        ({"EXTMOD_CACHE_URL": "ftp://x", "EXTMOD_LAUNCHER": "ccache"}, "takes redis://"),
    ):
        r = extmod(
            ["--root", tmp_path / "root", "build", EXAMPLES / "hello", "--kernel-dir",
             trees["gcc"]["build"]],
            env=env,
        )  # fmt: skip
        assert r.rc == 3 and said in r.err and len(r.err.splitlines()) == 1, r.err


@pytest.fixture
def distccd(tmp_path: Path) -> Iterator[list[tuple[str, Path]]]:
    """Two real distccd daemons on 127.0.0.1, ports of their own, 2 jobs each, each
    logging to a file (in a dir the daemon's own user, which it switches to from root, can
    write); stopped by PID with their preforked children (their own process group)."""
    logs = Path(tempfile.mkdtemp(prefix="extmod-distccd-"))
    logs.chmod(0o777)
    daemons = []
    try:
        for i in range(2):
            port, log = free_port(), logs / f"d{i}.log"
            proc = subprocess.Popen(
                ["distccd", "--no-detach", "--daemon", "--listen", "127.0.0.1", "--port",
                 str(port), "--allow", "127.0.0.1", "--jobs", "2", "--log-level", "info",
                 f"--log-file={log}"],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            daemons.append((proc, f"127.0.0.1:{port}/2", log))
        deadline = time.monotonic() + 20
        while not all(log.is_file() and "listening" in log.read_text() for _, _, log in daemons):
            assert time.monotonic() < deadline, "distccd did not start"
            time.sleep(0.1)
        yield [(host, log) for _, host, log in daemons]
    finally:
        for proc, _, _ in daemons:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        shutil.rmtree(logs, ignore_errors=True)


@pytest.mark.parametrize(("tree", "cc"), [("gcc", "gcc-12"), ("thinlto", "clang-16")])
def test_distcc_sends_the_compiles_to_the_daemons(
    trees: dict[str, Any], tmp_path: Path, distccd: list[tuple[str, Path]], tree: str, cc: str
) -> None:
    """launcher = distcc with two daemons of 2 slots each: the job budget is their 4
    slots (this machine has fewer CPUs), and the daemons' logs count the package's compiles
    (on ThinLTO: the bitcode compiles; the link stays here)."""
    src = tmp_path / "many"
    src.mkdir()
    units = [f"u{i}" for i in range(6)]
    for u in units:
        (src / f"{u}.c").write_text(f"int extmod_{u}(int x) {{ return x * {len(u)}; }}\n")
    (src / "main.c").write_text(
        '#include <linux/module.h>\nMODULE_LICENSE("GPL");\n'
        "static int __init m_init(void) { return 0; }\nmodule_init(m_init);\n"
    )
    objs = " ".join(f"{u}.o" for u in ["main", *units])
    (src / "Kbuild").write_text(f"obj-m := many.o\nmany-y := {objs}\n")
    env = {"EXTMOD_LAUNCHER": "distcc", "DISTCC_HOSTS": " ".join(h for h, _ in distccd)}
    r = extmod(
        ["--root", tmp_path / "root", "--json", "build", src, "--kernel-dir",
         trees[tree]["build"], "-o", tmp_path / "out"],
        env=env,
    )  # fmt: skip
    assert r.rc == 0, r.err
    assert f"'CC=distcc {cc}'" in r.json()["reproducer"]
    shim = next((tmp_path / "root/var/lib/extmod/build/many").rglob(".extmod/bin/make"))
    assert "-j4" in shim.read_text()  # the remote slots, not this machine's CPUs
    done = [
        line for _, log in distccd for line in log.read_text().splitlines() if "COMPILE_OK" in line
    ]
    compiled = {u for u in ["main", *units] if any(line.endswith(f"/{u}.c") for line in done)}
    assert compiled == {"main", *units}, done
    assert all(
        any("COMPILE_OK" in line for line in log.read_text().splitlines()) for _, log in distccd
    )
    assert Path(r.json()["modules"][0]).is_file()
