"""The ThinLTO cache on real clang-16 trees: read-only 5.13-6.9 tree as a user, the resolution
order, the .incbin guard, clean and prune."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, NOBODY, Ran, copy_example, extmod, listing, snapshot

pytestmark = pytest.mark.slow


def read_only(tree: str) -> list[str]:
    """A wrapper that runs the command with ``tree`` bind-mounted read-only, in a private
    mount namespace: nothing, not even a bug running as root, could write the tree."""
    t = shlex.quote(tree)
    script = f'mount --bind {t} {t} && mount -o remount,ro,bind {t} && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh"]


@pytest.fixture(scope="module")
def gen513_trees(trees: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The two 5.13-6.9 trees, checked byte for byte after every test of this module."""
    paths = [Path(trees["gen513"]["build"]), Path(trees["cachedir"]["build"])]
    before = [snapshot(p) for p in paths]
    yield trees
    assert [snapshot(p) for p in paths] == before, "a kernel tree changed"


def test_plain_kbuild_fails_as_user_on_gen513(gen513_trees: dict[str, Any], user_dir: Path) -> None:
    """The bug extmod answers: kbuild's relative cache dir lands in the root-owned tree."""
    tree = gen513_trees["gen513"]["build"]
    src = copy_example("twofile", user_dir, owner=NOBODY)
    res = subprocess.run(
        [
            *read_only(tree),
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "make",
            "-C",
            tree,
            f"M={src}",
            "LLVM=-16",
            "modules",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(user_dir)},
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "LLVM ERROR" in out and ("Permission denied" in out or "Read-only" in out), out[-2000:]


def _user_build(tree: str, user_dir: Path, extra: list[str], env: dict[str, str]) -> Ran:
    src = user_dir / "twofile"
    if not src.exists():
        copy_example("twofile", user_dir, owner=NOBODY)
    home = user_dir / "home"
    # A fresh build each time: in a kept build dir make would (rightly) relink nothing.
    shutil.rmtree(home / ".state/extmod/build", ignore_errors=True)
    return extmod(
        ["--json", "build", src, "--kernel-dir", tree, *extra],
        env={
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_STATE_HOME": str(home / ".state"),
            **env,
        },
        user=NOBODY,
        wrap=read_only(tree),
    )


def _assert_cache(r: Ran, base: Path, source: str) -> None:
    assert r.rc == 0, r.err
    res = r.json()
    cache = Path(res["thinlto_cache_dir"])
    assert res["thinlto_cache_source"] == source
    assert cache.parent == base / "6.1.192" / "twofile", cache
    files = [f for f in cache.iterdir() if f.name.startswith("llvmcache-")]
    assert files
    assert all(f.stat().st_uid == NOBODY for f in files)
    assert Path(res["modules"][0]).read_bytes()[:4] == b"\x7fELF"


def test_resolution_order_as_user_on_read_only_gen513(
    gen513_trees: dict[str, Any], user_dir: Path
) -> None:
    gen513 = gen513_trees["gen513"]["build"]
    kernel_tree = gen513_trees["cachedir"]["build"]
    kernel_dir = Path(gen513_trees["cachedir"]["cachedir"])
    shutil.rmtree(kernel_dir, ignore_errors=True)
    kernel_dir.mkdir(parents=True)
    os.chown(kernel_dir, NOBODY, NOBODY)
    flag, env_dir, cfg_dir = (user_dir / n for n in ("flag", "env", "cfg"))
    for d in (flag, env_dir, cfg_dir):
        d.mkdir()
        os.chown(d, NOBODY, NOBODY)
    config = user_dir / "config.toml"
    config.write_text(f'[thinlto]\ncache_dir = "{cfg_dir}"\n')
    try:
        # Every source present; peel them off from the top, on the tree that sets the
        # kernel option; then the default, on the tree that does not.
        with_all = ["--thinlto-cache-dir", str(flag)]
        env = {"EXTMOD_THINLTO_CACHE_DIR": str(env_dir)}
        cfg = ["--config", str(config)]
        _assert_cache(_user_build(kernel_tree, user_dir, cfg + with_all, env), flag, "flag")
        _assert_cache(_user_build(kernel_tree, user_dir, cfg, env), env_dir, "env")
        _assert_cache(_user_build(kernel_tree, user_dir, cfg, {}), cfg_dir, "config")
        _assert_cache(_user_build(kernel_tree, user_dir, [], {}), kernel_dir, "kernel")
        _assert_cache(
            _user_build(gen513, user_dir, [], {}),
            user_dir / "home/.cache/extmod/thinlto",
            "default",
        )
    finally:
        shutil.rmtree(kernel_dir, ignore_errors=True)
    for tree in (gen513, kernel_tree):
        assert not (Path(tree) / ".thinlto-cache").exists()


INCBIN_C = r"""// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
extern const char blob_start[], blob_end[];
asm(".section .rodata\n.globl blob_start\nblob_start:\n"
    ".incbin \"" BLOB_PATH "\"\n.globl blob_end\nblob_end:\n.byte 0\n.previous\n");
static int __init blob_init(void)
{
	pr_info("extmod-blob: %s\n", blob_start);
	return 0;
}
module_init(blob_init);
MODULE_LICENSE("GPL");
"""
INCBIN_KBUILD = """obj-m := blob.o
blob-y := main.o other.o
ccflags-y := -DBLOB_PATH='"$(src)/blob.bin"'
$(obj)/main.o: $(src)/blob.bin
"""


def _incbin_module(dest: Path) -> Path:
    src = dest / "blob"
    src.mkdir()
    (src / "main.c").write_text(INCBIN_C)
    (src / "other.c").write_text("int blob_other(int x) { return x + 1; }\n")
    (src / "Kbuild").write_text(INCBIN_KBUILD)
    (src / "blob.bin").write_text("EXTMOD-BLOB-v1")
    return src


def test_incbin_change_is_never_stale(trees: dict[str, Any], tmp_path: Path) -> None:
    thin = trees["thinlto"]["build"]
    src = _incbin_module(tmp_path)
    args = ["--root", tmp_path / "root", "--json", "build", src, "--kernel-dir", thin]
    first = extmod(args)
    assert first.rc == 0, first.err
    ko = Path(first.json()["modules"][0])
    assert b"EXTMOD-BLOB-v1" in ko.read_bytes()
    ns1 = Path(first.json()["thinlto_cache_dir"])

    # An edit to ordinary C keeps the namespace: that is where the cache pays.
    (src / "other.c").write_text("int blob_other(int x) { return x + 2; }\n")
    second = extmod(args)
    assert second.rc == 0, second.err
    assert Path(second.json()["thinlto_cache_dir"]) == ns1

    (src / "blob.bin").write_text("EXTMOD-BLOB-v2")
    third = extmod(args)
    assert third.rc == 0, third.err
    data = Path(third.json()["modules"][0]).read_bytes()
    assert b"EXTMOD-BLOB-v2" in data and b"EXTMOD-BLOB-v1" not in data
    assert Path(third.json()["thinlto_cache_dir"]) != ns1
    assert not ns1.exists(), "the dead namespace should be dropped after a good build"


def test_incbin_without_guard_is_stale(trees: dict[str, Any], tmp_path: Path) -> None:
    """Control: the same edit with one fixed cache dir gives the old blob (upstream's bug,
    the reason for commit aba091547ef6), so the test above can fail."""
    thin = trees["thinlto"]["build"]
    src = _incbin_module(tmp_path)
    cache = tmp_path / "fixed-cache"
    cache.mkdir()
    wrapper = tmp_path / "ld.lld"
    wrapper.write_text(f'#!/bin/sh\nexec ld.lld-16 "$@" --thinlto-cache-dir={cache}\n')
    wrapper.chmod(0o755)
    make = ["make", "-C", thin, f"M={src}", "LLVM=-16", f"LD={wrapper}", "modules"]
    subprocess.run(make, check=True, capture_output=True)
    assert b"EXTMOD-BLOB-v1" in (src / "blob.ko").read_bytes()
    time.sleep(1.1)
    (src / "blob.bin").write_text("EXTMOD-BLOB-v2")
    subprocess.run(make, check=True, capture_output=True)
    assert b"EXTMOD-BLOB-v1" in (src / "blob.ko").read_bytes()


def test_cache_off_leaves_nothing(trees: dict[str, Any], tmp_path: Path) -> None:
    gen513 = trees["gen513"]["build"]
    root = tmp_path / "root"
    src = copy_example("twofile", tmp_path)
    r = extmod(
        ["--root", root, "--json", "build", src, "--kernel-dir", gen513, "--thinlto-cache", "off"],
        wrap=read_only(gen513),
    )
    assert r.rc == 0, r.err
    assert r.json()["thinlto_cache_dir"] is None
    assert not (root / "var/lib/extmod/thinlto-cache").exists()
    scratch = root / "var/lib/extmod/build/twofile/_adhoc/6.1.192/.extmod/thinlto-scratch"
    assert not scratch.exists()


def test_clean_removes_build_dirs_and_caches(trees: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "root"
    flagged = tmp_path / "elsewhere"
    for example in ("hello", "twofile"):
        src = copy_example(example, tmp_path)
        for extra in ([], ["--thinlto-cache-dir", str(flagged)]):
            r = extmod(
                ["--root", root, "build", src, "--kernel-dir", trees["thinlto"]["build"], *extra]
            )
            assert r.rc == 0, r.err
    state = root / "var/lib/extmod"
    assert listing(state / "thinlto-cache") and listing(flagged)

    r = extmod(["--root", root, "clean", "hello", "--thinlto-cache-dir", flagged])
    assert r.rc == 0, r.err
    assert not (state / "build/hello").exists()
    assert (state / "build/twofile/_adhoc/6.1.192/dkms/twofile/_adhoc/build").is_dir()
    assert not (flagged / "6.1.192/hello").exists() and (flagged / "6.1.192/twofile").exists()

    r = extmod(["--root", root, "clean", "--all"])  # default base only: flagged stays
    assert r.rc == 0, r.err
    assert listing(state / "build") == set() and listing(state / "thinlto-cache") == set()
    assert (flagged / "6.1.192/twofile").exists()
    r = extmod(["--root", root, "clean", "--all", "--thinlto-cache-dir", flagged])
    assert r.rc == 0 and listing(flagged) == set()
    assert extmod(["--root", root, "clean"]).rc == 3


def test_cache_show_and_prune_honour_policy(trees: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "root"
    for i in range(2):
        src = copy_example("twofile", tmp_path / str(i))
        r = extmod(
            [
                "--root",
                root,
                "build",
                src,
                "--kernel-dir",
                trees["thinlto"]["build"],
                "--name",
                f"pkg{i}",
            ]
        )
        assert r.rc == 0, r.err
    show = extmod(["--root", root, "--json", "cache", "show"])
    rows = [r for r in show.json() if r["kind"] == "thinlto"]
    assert [r["package"] for r in rows] == ["pkg0", "pkg1"]
    # the kept build dirs of the two builds are listed too (issue 22)
    kept = [(r["package"], r["version"]) for r in show.json() if r["kind"] == "build"]
    assert kept == [("pkg0", "_adhoc"), ("pkg1", "_adhoc")], show.out
    assert all(r["files"] > 0 and r["bytes"] > 0 for r in rows)
    assert "pkg0" in extmod(["--root", root, "cache", "show"]).out

    # Age: pkg0's files were last used two days ago; the policy keeps one day.
    ns0, ns1 = (Path(r["dir"]) for r in rows)
    old = time.time() - 2 * 86400
    for f in ns0.iterdir():
        os.utime(f, (old, old))
    config = tmp_path / "config.toml"
    config.write_text('[thinlto]\nmax_age = "1d"\n')
    r = extmod(["--root", root, "--config", config, "--json", "cache", "prune"])
    assert r.rc == 0, r.err
    assert r.json()["files"] == rows[0]["files"]
    assert not ns0.exists() and ns1.exists()

    # Size: a bound below pkg1's size removes its least recently used files first.
    files = sorted(f for f in ns1.iterdir() if f.name.startswith("llvmcache-"))
    for n, f in enumerate(files):
        t = time.time() - 3600 * (len(files) - n)
        os.utime(f, (t, t))
    keep = files[-1].stat().st_size
    config.write_text(f'[thinlto]\nmax_size = "{keep}"\n')
    r = extmod(["--root", root, "--config", config, "--json", "cache", "prune"])
    assert r.rc == 0, r.err
    assert sorted(f for f in ns1.iterdir() if f.name.startswith("llvmcache-")) == [files[-1]]


def test_examples_untouched() -> None:
    assert {p.name for p in (EXAMPLES / "hello").iterdir()} == {"hello.c", "Kbuild"}
