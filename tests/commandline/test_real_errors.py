"""One-line errors with documented exit codes, writing nothing, against real trees."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from conftest import copy_example, extmod

pytestmark = pytest.mark.slow


def hide_llvm16() -> list[str]:
    """Run in a mount namespace where clang-16 is not installed: its binaries in /usr/bin
    are covered by /dev/null (not executable) and /usr/lib/llvm-16 by an empty tmpfs."""
    hide = " && ".join(
        f"mount --bind /dev/null {shlex.quote(str(p))}"
        for p in sorted(Path("/usr/bin").glob("*-16"))
    )
    script = f'{hide} && mount -t tmpfs none /usr/lib/llvm-16 && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh"]


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("extmod: error: ")
    return lines[0]


def test_missing_clang16(trees: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    src = copy_example("hello", tmp_path)
    r = extmod(
        ["--root", root, "build", src, "--kernel-dir", trees["thinlto"]["build"]],
        wrap=hide_llvm16(),
    )
    assert r.rc == 5
    assert _one_line_error(r.err) == "extmod: error: clang-16 not found: apt-get install clang-16"
    assert list(root.iterdir()) == []
    # kernels still lists the tree and says what is missing.
    k = extmod(["--json", "kernels", "--kernel-dir", trees["thinlto"]["build"]], wrap=hide_llvm16())
    row = next(x for x in k.json() if x.get("build_dir") == trees["thinlto"]["build"])
    assert row["toolchain_installed"].startswith("no: clang-16 not found")


def test_unprepared_tree(trees: dict[str, Any], tmp_path: Path) -> None:
    """A configured but never prepared tree: top Makefile and .config, as after
    `make tinyconfig` in linux-source-6.1."""
    tree = tmp_path / "linux"
    tree.mkdir()
    thin = Path(trees["thinlto"]["build"])
    for name in ("Makefile", ".config"):
        os.link(thin / name, tree / name)
    root = tmp_path / "root"
    root.mkdir()
    src = copy_example("hello", tmp_path)
    r = extmod(["--root", root, "build", src, "--kernel-dir", tree])
    assert r.rc == 4
    assert "include/config/auto.conf is missing" in _one_line_error(r.err)
    assert list(root.iterdir()) == [] and sorted(p.name for p in tree.iterdir()) == [
        ".config",
        "Makefile",
    ]


def test_nonexistent_kernel(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    src = copy_example("hello", tmp_path)
    r = extmod(["--root", root, "build", src, "-k", "9.9.9-nope"])
    assert r.rc == 4
    assert "no kernel 9.9.9-nope" in _one_line_error(r.err)
    assert list(root.iterdir()) == []


def test_compile_error_names_file_line_and_log(trees: dict[str, Any], tmp_path: Path) -> None:
    src = copy_example("hello", tmp_path)
    (src / "hello.c").write_text((src / "hello.c").read_text() + "\nint broken = ;\n")
    r = extmod(
        ["--root", tmp_path / "root", "build", src, "--kernel-dir", trees["thinlto"]["build"]]
    )
    assert r.rc == 6
    # the build's announcement and reproducer (printed before it runs), then one line: the
    # compiler's first error with file:line and the log (issue 22: the check used to drop
    # the first two lines unseen)
    announce, reproducer, *rest = [ln for ln in r.err.splitlines() if ln.strip()]
    assert announce.startswith("building hello for ") and " with Debian clang version" in announce
    assert reproducer.startswith("+ cd ") and " make KERNELRELEASE=" in reproducer
    line = _one_line_error("\n".join(rest))
    assert "hello.c:" in line and "error:" in line and "(log: " in line


def test_bad_config_file(trees: dict[str, Any], tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[thinlto]\nmax_size = "lots"\n')
    src = copy_example("hello", tmp_path)
    r = extmod(
        [
            "--root",
            tmp_path / "root",
            "--config",
            cfg,
            "build",
            src,
            "--kernel-dir",
            trees["gcc"]["build"],
        ]
    )
    assert r.rc == 3
    assert _one_line_error(r.err) == (
        f"extmod: error: {cfg}: [thinlto] max_size: expected a size like 512M or 2G, got 'lots'"
    )
    assert not (tmp_path / "root").exists()
