"""The ThinLTO cache's own rules (fast): where its base is, its lld policy, the .incbin
guard's fingerprint, prune and remove (the real trees: test_real_thinlto_cache.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from extmod.core import config, paths
from extmod.core.errors import UserError
from extmod.kernel import thinlto
from test_kernel_toolchain import fake_kernel


def cfg(**flags: str | None) -> config.Config:
    return config.load(None, flags=flags, environ={})


def test_cache_base_order(tmp_path: Path) -> None:
    p = paths.for_invocation(tmp_path / "r", {}, 0)
    k = fake_kernel(tmp_path)
    assert thinlto.resolve_base(cfg(), k, p) == thinlto.CacheChoice(
        tmp_path / "r/var/lib/extmod/thinlto-cache", "default"
    )
    k2 = fake_kernel(tmp_path / "b", extra='CONFIG_LTO_CLANG_THIN_CACHEDIR="/kc"\n')
    assert thinlto.resolve_base(cfg(), k2, p).source == "kernel"
    assert thinlto.resolve_base(cfg(**{"thinlto.cache_dir": "/f"}), k2, p) == thinlto.CacheChoice(
        Path("/f"), "flag"
    )
    with pytest.raises(UserError, match="inside the kernel tree"):
        thinlto.resolve_base(cfg(**{"thinlto.cache_dir": str(k.build_dir / "x")}), k, p)
    with pytest.raises(UserError, match="absolute"):
        thinlto.resolve_base(cfg(**{"thinlto.cache_dir": "rel"}), k, p)
    user = paths.for_invocation(None, {"HOME": "/home/u", "XDG_CACHE_HOME": "/xc"}, 1000)
    assert user.default_cache_dir == Path("/xc/extmod/thinlto")
    assert user.state_dir == Path("/home/u/.local/state/extmod")


def test_policy_string() -> None:
    c = config.load(None, flags={}, environ={})
    assert thinlto.policy(c) == "cache_size_bytes=2147483648:prune_after=2592000s"


def test_fingerprint_guard(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    src = tmp_path / "m"
    src.mkdir()
    (src / "a.c").write_text('asm(".incbin \\"fw.bin\\"");\n')
    (src / "b.c").write_text("int b;\n")
    (src / "fw.bin").write_text("1")
    (src / "Kbuild").write_text("obj-m := m.o\n")
    fp = thinlto.fingerprint(src, k, "clang 16")
    (src / "b.c").write_text("int b = 2;\n")
    assert thinlto.fingerprint(src, k, "clang 16") == fp  # C edits: the key covers them
    (src / "fw.bin").write_text("2")
    fp2 = thinlto.fingerprint(src, k, "clang 16")
    assert fp2 != fp
    assert thinlto.fingerprint(src, k, "clang 17") != fp2
    # A target named through a macro: every non-translation-unit file counts.
    (src / "a.c").write_text('asm(".incbin " PATH);\n')
    (src / "Kbuild").write_text("obj-m := m.o\nccflags-y := -DPATH=x\n")
    fp3 = thinlto.fingerprint(src, k, "clang 16")
    (src / "Kbuild").write_text("obj-m := m.o\nccflags-y := -DPATH=y\n")
    assert thinlto.fingerprint(src, k, "clang 16") != fp3


def test_prune_and_remove(tmp_path: Path) -> None:
    base = tmp_path / "cache"
    ns = base / "6.1" / "pkg" / "abc"
    ns.mkdir(parents=True)
    now = time.time()
    for i in range(4):
        f = ns / f"llvmcache-{i}"
        f.write_bytes(b"x" * 100)
        os.utime(f, (now - i * 3600, now - i * 3600))
    (ns / "llvmcache.timestamp").write_text("")
    c = config.load(None, flags={}, environ={})
    limits = config.Config(**{**c.__dict__, "thinlto_max_size": 150, "thinlto_max_age": 7000})
    r = thinlto.prune(base, limits, now=now)
    # age drops 2h and 3h; size then drops the 1h one to get to <= 150 bytes
    assert (r.files, r.bytes) == (3, 300)
    assert sorted(f.name for f in ns.iterdir()) == ["llvmcache-0", "llvmcache.timestamp"]
    assert [n.files for n in thinlto.namespaces(base)] == [1]
    assert thinlto.remove(base, "pkg", None) == [base / "6.1" / "pkg"]
    assert list(base.iterdir()) == []
