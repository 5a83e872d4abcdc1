"""Lifecycle decisions, fast and in process on a fake kernel tree: a recorded build is
reused while the kernel (its identity) and every input (source tree, dkms.conf as read
for the kernel, toolchain, signer) are the same; a failed build is not retried by the
hooks until an input changes; which modules a load check withholds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from extmod.core import atomic, config, paths
from extmod.core.errors import BuildError, LoadCheckError, MakeFailed
from extmod.kernel import kernel
from extmod.ops import freshness, installer, session
from extmod.store import failures
from extmod.store.state import Added, BuildRecord, Built, BuiltModule

CONF = 'PACKAGE_NAME="fresh"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="fresh"\n'
CONF += 'DEST_MODULE_LOCATION[0]="/extra"\nAUTOINSTALL="yes"\n'


def _host_gcc() -> tuple[str, str]:
    """The host gcc's full version and its major (12.2.0 on Debian 12, 14.2.0 on 13): the
    fake kernel was built with it, so the toolchain lookup finds it on any host."""
    full = subprocess.run(
        ["gcc", "-dumpfullversion"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return full, full.split(".")[0]


def _gcc_kernel(tmp: Path) -> kernel.Kernel:
    tree = tmp / "kbuild"
    for f in kernel.PREPARED_FILES:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / f).write_text("")
    (tree / "include/generated/utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-9-amd64"\n')
    full, major = _host_gcc()
    number = "".join(f"{int(x):02d}" for x in [*full.split("."), "0", "0"][:3]).lstrip("0")
    (tree / "include/config/auto.conf").write_text(
        f"CONFIG_X86_64=y\nCONFIG_CC_IS_GCC=y\nCONFIG_GCC_VERSION={number}\n"
        f'CONFIG_CC_VERSION_TEXT="gcc-{major} (Debian {full}) {full}"\n'
    )
    return kernel.load(tree)


def _fresh_package(
    tmp: Path,
) -> tuple[kernel.Kernel, Path, paths.Paths, config.Config]:
    """A fake gcc kernel, the package's source dir, a root, the default settings."""
    src = tmp / "fresh-1.0"
    src.mkdir()
    (src / "dkms.conf").write_text(CONF)
    (src / "fresh.c").write_text("int x;\n")
    cfg = config.load(None, flags={}, environ={})
    return _gcc_kernel(tmp), src, paths.for_invocation(tmp / "root", {}, 0), cfg


def test_a_build_is_current_until_an_input_changes(tmp_path: Path) -> None:
    k, src, p, cfg = _fresh_package(tmp_path)

    def new_session() -> session.Session:
        return session.Session(cfg, p, lambda _: None)

    s = new_session()
    added, _ = s.state.add("fresh", "1.0", src)
    assert freshness.current_build(s, added, k) is None  # nothing built
    record = BuildRecord(
        "fresh", "1.0", k.release, k.arch, "now", (), kernel_identity=k.identity(),
        inputs=s.facts.inputs(added, k, s.facts.load(added, k)),
    )  # fmt: skip
    final = s.state.finished_dir("fresh", "1.0", k.release, k.arch)
    tmp = atomic.new_dir_beside(final)
    atomic.write_json(tmp / "build.json", record.to_json())
    s.state.publish_built(tmp, "fresh", "1.0", k.release, k.arch)
    assert freshness.current_build(new_session(), added, k) is not None  # same inputs: reused

    (src / "fresh.c").write_text("int y;\n")  # the source changed
    assert freshness.current_build(new_session(), added, k) is None
    (src / "fresh.c").write_text("int x;\n")
    assert freshness.current_build(new_session(), added, k) is not None

    (src / "dkms.conf").write_text(CONF.replace('"/extra"', '"/updates"'))  # dkms.conf
    assert freshness.current_build(new_session(), added, k) is None
    (src / "dkms.conf").write_text(CONF)

    # the same release rebuilt (a new Module.symvers: an ABI that changed without a bump)
    (k.build_dir / "Module.symvers").write_text("0x1\tsym\tvmlinux\tEXPORT_SYMBOL\t\n")
    rebuilt = kernel.load(k.build_dir)
    assert rebuilt.release == k.release and rebuilt.identity() != k.identity()
    assert freshness.current_build(new_session(), added, rebuilt) is None


def test_a_failed_build_is_remembered_until_an_input_changes(tmp_path: Path) -> None:
    """The kernel hooks do not retry a build that failed with the very same inputs; a
    failed make is remembered with its status, make line and log (what dkms says of it)."""
    k, src, p, cfg = _fresh_package(tmp_path)
    s = session.Session(cfg, p, lambda _: None)
    added, _ = s.state.add("fresh", "1.0", src)
    pkg = s.facts.load(added, k)
    assert freshness.remembered_failure(s, added, k, pkg) is None
    inputs = s.facts.inputs(added, k, pkg)
    failures.remember(p, failures.Failure("fresh", "1.0", k.release, inputs, "fresh.c:1: x"))
    found = freshness.remembered_failure(s, added, k, pkg)
    assert found is not None and found.error == "fresh.c:1: x" and found.status == 0
    with pytest.raises(BuildError, match=r"fresh.c:1: x \[not retried") as raised:
        freshness.ensure_built(s, added, k, pkg, retry_failed=False)
    assert not isinstance(raised.value, MakeFailed)
    made = failures.Failure("fresh", "1.0", k.release, inputs, "fresh.c:1: x", 2, "make all", "/l")
    failures.remember(p, made)
    assert freshness.remembered_failure(s, added, k, pkg) == made
    with pytest.raises(MakeFailed) as failed:
        freshness.ensure_built(s, added, k, pkg, retry_failed=False)
    assert (failed.value.status, failed.value.make, str(failed.value.log)) == (2, "make all", "/l")
    (src / "fresh.c").write_text("int y;\n")  # a fix: the next command tries again
    s2 = session.Session(cfg, p, lambda _: None)
    assert freshness.remembered_failure(s2, added, k, s2.facts.load(added, k)) is None


def _built(tmp: Path, problems: tuple[str, ...]) -> Built:
    mods = tuple(BuiltModule(n, n, "/extra", f"{n}.ko", "0" * 64) for n in ("a", "b"))
    rec = BuildRecord("p", "1", "6.1.0-9-amd64", "x86_64", "now", mods, load_check=problems)
    return Built("p", "1", "6.1.0-9-amd64", "x86_64", tmp, rec)


@pytest.mark.parametrize(
    ("mode", "problems", "expect"),
    [
        ("per-module", (), ()),
        ("per-module", ("a.ko: unknown symbol y",), ("a.ko: unknown symbol y",)),
        ("strict", ("a.ko: unknown symbol y",), LoadCheckError),
        ("per-module", ("a.ko: x", "b.ko: y"), LoadCheckError),  # nothing would load
        ("per-module", ("vermagic differs",), LoadCheckError),  # not one module's problem
    ],
)
def test_which_modules_a_load_check_withholds(
    tmp_path: Path, mode: str, problems: tuple[str, ...], expect: object
) -> None:
    k = _gcc_kernel(tmp_path)
    p = paths.for_invocation(tmp_path / "root", {}, 0)
    cfg = config.load(None, flags={"install.load_check": mode}, environ={})
    s = session.Session(cfg, p, lambda _: None)
    added = Added("p", "1", tmp_path)
    if expect is LoadCheckError:
        with pytest.raises(LoadCheckError, match="not installed"):
            installer.withheld(s, added, k, _built(tmp_path, problems))
    else:
        assert installer.withheld(s, added, k, _built(tmp_path, problems)) == expect
    forced = session.Session(cfg, p, lambda _: None, force=True)
    assert installer.withheld(forced, added, k, _built(tmp_path, problems)) == ()
