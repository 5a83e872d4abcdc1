"""The phases of a build, fast and in process (no compiler): the tree synced from the
source by content, the build dir wiped when what its objects were built against changed,
the made-up package of a bare kbuild dir, what make left found, the make shim, the line
of the log a person sees first."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from extmod.builder import adhoc, build, builddir, diagnose
from extmod.core import config, paths
from extmod.core.errors import BuildError, UserError
from extmod.kernel import toolchain
from test_freshness import _gcc_kernel


def test_sync_copies_by_content_and_keeps_mtimes_of_unchanged_files(tmp_path: Path) -> None:
    src, tree, manifest = tmp_path / "src", tmp_path / "tree", tmp_path / "manifest.json"
    (src / "sub").mkdir(parents=True)
    (src / "a.c").write_text("int a;\n")
    (src / "sub/b.c").write_text("int b;\n")
    builddir.sync(src, tree, manifest)
    assert (tree / "a.c").read_text() == "int a;\n" and (tree / "sub/b.c").is_file()
    os.utime(tree / "a.c", (1, 1))
    (tree / "a.o").write_text("object")  # a build output: stays
    (src / "sub/b.c").write_text("int b2;\n")
    (src / "c.c").write_text("int c;\n")
    builddir.sync(src, tree, manifest)
    assert (tree / "a.c").stat().st_mtime == 1  # unchanged: make skips its object
    assert (tree / "sub/b.c").read_text() == "int b2;\n" and (tree / "sub/b.c").stat().st_mtime > 1
    assert (tree / "c.c").is_file() and (tree / "a.o").is_file()
    (src / "c.c").unlink()
    builddir.sync(src, tree, manifest)
    assert not (tree / "c.c").exists()  # gone from the source: gone from the tree


def test_build_dir_is_wiped_when_its_inputs_change(tmp_path: Path) -> None:
    k = _gcc_kernel(tmp_path)
    resolved = toolchain.Resolved(
        toolchain.from_kernel(k), "/usr/bin/gcc", None, "strip", (), "gcc 12"
    )
    bdir = tmp_path / "b"
    tree, meta = bdir / "tree", bdir / ".extmod"

    def prepare(**extra: object) -> None:
        builddir.prepare(bdir, tree, meta, k, resolved, extra=dict(extra))

    prepare(conf="1")
    (tree / "x.o").write_text("o")
    prepare(conf="1")
    assert (tree / "x.o").exists()  # the same inputs: objects kept
    prepare(conf="2")
    assert not (tree / "x.o").exists()  # dkms.conf changed: built afresh
    (tree / "y.o").write_text("o")
    builddir.prepare(bdir, tree, meta, k, resolved, extra={"conf": "2"}, fresh=True)
    assert not (tree / "y.o").exists()  # fresh (PATCH, PRE_BUILD): always


def test_a_bare_kbuild_dir_is_a_made_up_package(tmp_path: Path) -> None:
    k = _gcc_kernel(tmp_path)
    p = paths.for_invocation(tmp_path / "root", {}, 0)
    cfg = config.load(None, flags={}, environ={})
    src = tmp_path / "hello"
    src.mkdir()
    with pytest.raises(UserError, match="neither Kbuild nor Makefile"):
        adhoc.adhoc_package(src, "hello", k, p, cfg)
    (src / "Makefile").write_text("all:\n")
    with pytest.raises(UserError, match="no obj-m line"):
        adhoc.adhoc_package(src, "hello", k, p, cfg)
    (src / "Makefile").write_text("obj-m += hello.o\n")
    pkg = adhoc.adhoc_package(src, "hello", k, p, cfg)
    tree = p.dkms_tree("hello", adhoc.ADHOC, k.release) / "hello" / adhoc.ADHOC / "build"
    assert pkg.make == f"make -C {k.build_dir} M={tree} modules"
    assert pkg.modules == () and not pkg.pre_build and pkg.excluded is None
    assert p.work_dir("hello", adhoc.ADHOC, k.release).name == k.release


def test_every_module_make_left_is_found(tmp_path: Path) -> None:
    class Job:
        tree = tmp_path / "tree"
        log = tmp_path / "build.log"
        label = "hello"
        pkg = None

        class req:
            class kernel:
                release = "6.1.0-9-amd64"

    (Job.tree / "sub").mkdir(parents=True)
    with pytest.raises(BuildError, match=r"made no \.ko"):
        build._every_module(Job)  # type: ignore[arg-type]
    (Job.tree / "hello.ko").write_bytes(b"")
    (Job.tree / "sub/two.ko").write_bytes(b"")
    found = build._every_module(Job)  # type: ignore[arg-type]
    assert [(m.built_location, m.built_name) for m in found] == [("", "hello"), ("sub/", "two")]


def test_make_shim_hands_every_make_the_toolchain(tmp_path: Path) -> None:
    shim = tmp_path / "bin/make"
    builddir.write_make_shim(shim, ["CC=clang-16", "LLVM=-16"], 3)
    (tmp_path / "Makefile").write_text("all:\n\t@echo CC=$(CC) LLVM=$(LLVM) FLAGS=$(MAKEFLAGS)\n")
    env = {"PATH": os.environ["PATH"], "MAKEFLAGS": ""}
    out = subprocess.run([shim, "-s"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "CC=clang-16 LLVM=-16" in out.stdout and "j3" in out.stdout


def test_first_error_prefers_the_compiler_line(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text(
        "make[1]: *** [Makefile:1: all] Error 2\n"
        "/t/hello.c:3:5: error: expected ';'\n"
        "ERROR: modpost: x undefined\n"
    )
    assert diagnose.first_error(log) == "/t/hello.c:3:5: error: expected ';'"
    log.write_text("cc1: No space left on device\n/t/a.c:1:1: error: x\n")
    assert diagnose.first_error(log) == "cc1: No space left on device"
    log.write_text("nothing useful\n")
    assert diagnose.first_error(log) == "make failed"
