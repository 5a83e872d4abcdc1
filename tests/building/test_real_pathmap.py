"""Issue 16.1, absolute build paths: with a launcher, a root build sees the kernel's trees
and its own build dir at release-free paths (builder/pathmap.py), so ccache serves the next
kernel ABI every unit whose headers did not change. On Debian's real headers of two ABIs of
one series (6.1.0-55 and the current one): with build.map_paths = auto the second ABI's
units are hits but the two that must miss (the .mod.c, which names the release, and a unit
that includes utsrelease.h); with off, every unit misses. Both make the same code."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import HEADER, debian_source_dir, extmod, make_root, package
from test_real_launcher import ccache_stats, code

pytestmark = pytest.mark.slow

UNITS = ("alpha", "beta", "gamma")
# zfs's dkms.conf finds the source tree while it is read: ${kernel_source_dir/%build/source}.
# Here the Kbuild refuses to build unless that test, made at evaluation, saw it. The outer
# Makefile hands kbuild M=$(shell pwd), as v4l2loopback's and many others' do.
MAKE = (
    "make KDIR=${kernel_source_dir} "
    'SEEN=$(test -e "${kernel_source_dir/%build/source}/include/linux/module.h" && echo yes)'
)
OUTER = "all:\n\t$(MAKE) -C $(KDIR) M=$(shell pwd) SEEN=$(SEEN) modules\n"


def mapped_package(dest: Path) -> Path:
    files = {f"{u}.c": f"int extmod_{u}(int x) {{ return x + {len(u)}; }}\n" for u in UNITS}
    files["main.c"] = HEADER + (
        '#include <generated/utsrelease.h>\nMODULE_VERSION("1.0");\n'
        "static const char built_for[] = UTS_RELEASE;\n"
        "static int __init m_init(void) { return built_for[0] == 0; }\n"
        "module_init(m_init);\n"
    )
    files["Makefile"] = OUTER
    objs = " ".join(f"{u}.o" for u in ("main", *UNITS))
    kbuild = (
        f"obj-m := mapped.o\nmapped-y := {objs}\n"
        "ifneq ($(SEEN),yes)\n$(error the source tree was not seen by dkms.conf)\nendif\n"
    )
    return package(dest, "mapped", files, kbuild, make=MAKE)


def two_abis(root: Path, trees: dict[str, Any]) -> tuple[str, str]:
    old, new = trees["oldabi"], trees["gcc"]
    make_root(root, old["kver"], old["build"], old["source"])
    make_root(root, new["kver"], new["build"], debian_source_dir(new["kver"]))
    return old["kver"], new["kver"]


def build_both(tmp: Path, trees: dict[str, Any], mode: str) -> tuple[dict[str, int], Path]:
    """add, then install for the old ABI and then the new one; the new one's ccache
    counts and its module."""
    root, ccache_dir = tmp / f"root-{mode}", tmp / f"ccache-{mode}"
    old, new = two_abis(root, trees)
    src = mapped_package(tmp / f"src-{mode}")
    env = {"EXTMOD_LAUNCHER": "ccache", "CCACHE_DIR": str(ccache_dir), "EXTMOD_MAP_PATHS": mode}
    assert extmod(["--root", root, "-q", "add", src], env=env).rc == 0
    r = extmod(["--root", root, "install", "mapped/1.0", "-k", old], env=env)
    assert r.rc == 0, r.err
    if mode == "auto":
        assert "view/kernel" in r.err, r.err  # it says so
    before = ccache_stats(ccache_dir)
    r = extmod(["--root", root, "install", "mapped/1.0", "-k", new], env=env)
    assert r.rc == 0, r.err
    after = ccache_stats(ccache_dir)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    ko = next((root / "lib/modules" / new).rglob("mapped.ko*"))
    return delta, ko


def test_the_next_abi_is_served_from_the_cache(trees: dict[str, Any], tmp_path: Path) -> None:
    mapped, ko_mapped = build_both(tmp_path, trees, "auto")
    hits = mapped.get("direct_cache_hit", 0) + mapped.get("preprocessed_cache_hit", 0)
    # the three plain units hit; main.c (utsrelease.h) and mapped.mod.c (vermagic) miss
    assert hits >= len(UNITS), mapped
    assert mapped.get("cache_miss", 0) == 2, mapped
    plain, ko_plain = build_both(tmp_path, trees, "off")
    plain_hits = plain.get("direct_cache_hit", 0) + plain.get("preprocessed_cache_hit", 0)
    assert plain.get("cache_miss", 0) >= len(UNITS) + 2, plain  # every unit of the package
    assert plain_hits < hits, (plain, mapped)
    assert code(ko_mapped, tmp_path) == code(ko_plain, tmp_path)
    # the release in main.c is the new one: nothing stale came from the cache
    assert trees["gcc"]["kver"].encode() in ko_mapped.read_bytes()
    srcversions = [
        subprocess.run(
            ["modinfo", "-F", "srcversion", str(k)], capture_output=True, text=True, check=True
        ).stdout.strip()
        for k in (ko_mapped, ko_plain)
    ]
    assert srcversions[0] == srcversions[1] and srcversions[0], srcversions


def test_errors_and_the_reproducer_name_the_real_paths(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """A compile error in the view is said at the build dir's real path; the mount point
    stays an empty dir outside the build, and the kernel tree is not written."""
    root = tmp_path / "root"
    old, _ = two_abis(root, trees)
    src = mapped_package(tmp_path / "src")
    (src / "beta.c").write_text("int extmod_beta(int x) { return x +; }\n")
    env = {"EXTMOD_LAUNCHER": "ccache", "CCACHE_DIR": str(tmp_path / "ccache")}
    assert extmod(["--root", root, "-q", "add", src], env=env).rc == 0
    r = extmod(["--root", root, "install", "mapped/1.0", "-k", old], env=env)
    assert r.rc != 0
    error = r.err.strip().splitlines()[-1]
    real = root / "var/lib/extmod/build/mapped/1.0" / old / "dkms/mapped/1.0/build/beta.c"
    assert f"{real}:1:" in error and "view" not in error, error
    reproducer = next(line for line in r.err.splitlines() if line.startswith("+ cd "))
    assert "/view/" not in reproducer and f"KDIR={root}/lib/modules/{old}/build" in reproducer
    assert list((root / "var/lib/extmod/view").iterdir()) == []
