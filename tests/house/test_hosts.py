"""The host table (scripts/hosts.py, issue 33): what the README commands install on Debian
12 and 13, read from /etc/os-release; an unknown release is one line naming the file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import hosts


def _os_release(tmp: Path, codename: str) -> Path:
    f = tmp / "os-release"
    f.write_text(f'PRETTY_NAME="Debian"\nID=debian\nVERSION_CODENAME={codename}\n')
    return f


def test_each_release_has_its_own_toolchains_and_source(tmp_path: Path) -> None:
    bookworm = hosts.this_host(_os_release(tmp_path, "bookworm")).apt("test")
    trixie = hosts.this_host(_os_release(tmp_path, "trixie")).apt("test")
    assert {"linux-source-6.1", "clang-16", "lld-16", "llvm-16"} <= set(bookworm)
    assert {"linux-source-6.12", "clang-19", "lld-19", "llvm-19"} <= set(trixie)
    assert not {"clang-16", "linux-source-6.1"} & set(trixie)  # not in trixie's archive
    demo = hosts.this_host(_os_release(tmp_path, "trixie")).apt("demo")
    assert "xz-utils" in demo  # Debian 13's modules are xz-compressed
    assert set(demo) <= set(hosts.FAST) <= set(trixie)


def test_an_unknown_release_is_named(tmp_path: Path) -> None:
    f = _os_release(tmp_path, "forky")
    with pytest.raises(SystemExit, match=rf"{f}: VERSION_CODENAME=forky: extmod's scripts know"):
        hosts.this_host(f)
    with pytest.raises(SystemExit, match="unknown profile"):
        hosts.this_host(_os_release(tmp_path, "bookworm")).apt("all")
