"""Issue 4 on real kernel trees: several (package, kernel) pairs build side by side under one
job budget shared with their makes; a pair whose inputs did not change is not built again
(and its dkms.conf is not even re-read by bash); each input that does change rebuilds."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, copy_headers, extmod, make_root

pytestmark = pytest.mark.slow


def wrappers(tmp: Path, real: dict[str, str], log: Path) -> str:
    """A bin dir whose compilers log each compile of a .c file (start and end, epoch
    seconds) and whose bash logs each run; everything else is the real binary."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, path in real.items():
        (bin_dir / name).write_text(
            "#!/bin/sh\nfor last; do :; done\n"
            f'case "$last" in *.c) ;; *) exec {path} "$@" ;; esac\n'
            f'echo "start $(date +%s.%N) $$ $last" >> {log}\n'
            f'{path} "$@"; rc=$?\necho "end $(date +%s.%N) $$ $last" >> {log}\nexit $rc\n'
        )
        (bin_dir / name).chmod(0o755)
    (bin_dir / "bash").write_text(f'#!/bin/sh\necho bash >> {log}.bash\nexec /bin/bash "$@"\n')
    (bin_dir / "bash").chmod(0o755)
    return f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"


def most_compiles_at_once(log: Path) -> int:
    events = []
    for line in log.read_text().splitlines():
        kind, stamp, _, _ = line.split(maxsplit=3)
        events.append((float(stamp), 0 if kind == "end" else 1))
    running = most = 0
    for _, start in sorted(events):
        running += 1 if start else -1
        most = max(most, running)
    return most


def outcomes(r: Any) -> dict[tuple[str, str], set[str]]:
    got: dict[tuple[str, str], set[str]] = {}
    for o in r.json()["outcomes"]:
        got.setdefault((o["ident"], o["kver"]), set()).add(o["action"])
    return got


def test_autoinstall_builds_side_by_side_within_the_budget(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    gcc, lto = trees["gcc"], trees["defconfig"]  # ACPI for acpi-call: not the tiny one
    root = make_root(tmp_path / "root", gcc["kver"], gcc["build"])
    link = root / "lib/modules" / lto["kver"] / "build"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(lto["build"], link.parent))
    log = tmp_path / "compiles"
    path = wrappers(tmp_path, {"gcc-12": "/usr/bin/gcc-12", "clang-16": "/usr/bin/clang-16"}, log)
    packages = ("vpoll-dkms", "acpi-call-dkms")
    for src in (
        EXAMPLES / "dkms-pair",
        *(Path(trees["dkms"]["packages"][p]["src"]) for p in packages),
    ):
        assert extmod(["--root", root, "add", src], env={"PATH": path}).rc == 0
    r = extmod(
        ["--root", root, "--json", "autoinstall", "-j", "2", "-k", gcc["kver"], "-k", lto["kver"]],
        env={"PATH": path},
    )
    assert r.rc == 0, r.err
    got = outcomes(r)
    assert len(got) == 6 and all("installed" in a for a in got.values()), got

    # Never more compiles at once than the budget, across all six builds and their makes
    # (the wrappers saw every compile: 5 .c files per kernel, besides the .mod.c files).
    starts = [ln for ln in log.read_text().splitlines() if ln.startswith("start")]
    assert len([ln for ln in starts if not ln.endswith(".mod.c")]) == 10, starts
    assert most_compiles_at_once(log) <= 2, log.read_text()
    spans = []
    for build_json in (root / "var/lib/extmod/packages").glob("*/*/built/*/*/build.json"):
        info = json.loads(build_json.read_text())
        # Debian's kernel has CONFIG_MODULE_SIG, the defconfig ThinLTO tree has not: extmod
        # signs for the first only (the tiny kernels sign too: test_real_lifecycle).
        assert info["signed"] is (info["kernel"] == gcc["kver"]), (info["kernel"], info["signed"])
        spans.append((info["started_at"], info["started_at"] + info["seconds"], info["name"]))
        make_log = (build_json.parent / "make.log").read_text()
        assert "jobserver unavailable" not in make_log and "forced in submake" not in make_log
    assert len(spans) == 6
    spans.sort()
    overlapping = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
    assert overlapping, f"no two builds ran at the same time: {spans}"


def test_only_changed_inputs_rebuild(trees: dict[str, Any], tmp_path: Path) -> None:
    gcc = trees["gcc"]
    kver = gcc["kver"]
    # A copy of the headers, so the test can change the kernel's Module.symvers.
    tree = tmp_path / "headers"
    copy_headers(Path(gcc["build"]), tree)
    root = make_root(tmp_path / "root", kver, str(tree))
    log = tmp_path / "compiles"
    env = {"PATH": wrappers(tmp_path, {"gcc-12": "/usr/bin/gcc-12"}, log)}
    vpoll = Path(trees["dkms"]["packages"]["vpoll-dkms"]["src"])
    for src in (EXAMPLES / "dkms-pair", vpoll):
        assert extmod(["--root", root, "add", src], env=env).rc == 0
    bash_log = Path(f"{log}.bash")

    def autoinstall(*extra: str) -> dict[tuple[str, str], str]:
        bash_log.unlink(missing_ok=True)
        r = extmod(["--root", root, "--json", "autoinstall", "-k", kver, *extra], env=env)
        assert r.rc == 0, r.err
        return {
            k: "built" if "built" in a else "up to date" if a == {"up to date"} else str(a)
            for k, a in outcomes(r).items()
        }

    pair, vp = ("extmod-pair/1.0", kver), ("vpoll/0.1", kver)
    assert autoinstall() == {pair: "built", vp: "built"}
    # Nothing changed: no build, and dkms.conf is not even read by bash again.
    assert autoinstall() == {pair: "up to date", vp: "up to date"}
    assert not bash_log.exists(), "a no-op autoinstall ran bash"
    # A new mtime with the same content is no change.
    src_c = root / "usr/src/vpoll-0.1/vpoll.c"
    os.utime(src_c, (1, 1))
    assert autoinstall() == {pair: "up to date", vp: "up to date"}
    # Changed source content: that package alone.
    src_c.write_text(src_c.read_text() + "\n/* edited */\n")
    assert autoinstall() == {pair: "up to date", vp: "built"}
    # An /etc/dkms override changes how dkms.conf evaluates for one package.
    (root / "etc/dkms").mkdir(parents=True)
    (root / "etc/dkms/vpoll.conf").write_text('STRIP[0]="no"\n')
    assert autoinstall() == {pair: "up to date", vp: "built"}
    # The kernel changed (Module.symvers): both.
    symvers = tree / "Module.symvers"
    symvers.unlink()  # a copy of the real file, not the file itself
    shutil.copyfile(Path(gcc["build"]) / "Module.symvers", symvers)
    with open(symvers, "a") as f:
        f.write("0x12345678\textmod_test_symbol\tvmlinux\tEXPORT_SYMBOL\t\n")
    assert autoinstall() == {pair: "built", vp: "built"}
    # --force builds what is up to date.
    assert autoinstall("--force") == {pair: "built", vp: "built"}
    assert autoinstall() == {pair: "up to date", vp: "up to date"}


def test_a_failed_build_is_not_retried_until_an_input_changes(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    gcc = trees["gcc"]
    kver = gcc["kver"]
    root = make_root(tmp_path / "root", kver, gcc["build"])
    log = tmp_path / "compiles"
    env = {"PATH": wrappers(tmp_path, {"gcc-12": "/usr/bin/gcc-12"}, log)}
    src = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(
        'PACKAGE_NAME="broken"\nPACKAGE_VERSION="1"\n'
        'BUILT_MODULE_NAME[0]="hello"\nAUTOINSTALL="yes"\n'
        'DEST_MODULE_LOCATION[0]="/extra"\n'
    )
    (src / "hello.c").write_text((src / "hello.c").read_text() + "\nthis is not C;\n")
    assert extmod(["--root", root, "add", src], env=env).rc == 0

    def autoinstall(*extra: str) -> tuple[int, str, int]:
        log.unlink(missing_ok=True)
        r = extmod(["--root", root, "--json", "autoinstall", "-k", kver, *extra], env=env)
        lines = log.read_text().splitlines() if log.exists() else []
        compiles = sum(ln.startswith("start") and not ln.endswith(".mod.c") for ln in lines)
        detail = " ".join(o["detail"] for o in r.json()["outcomes"])
        return r.rc, detail, compiles

    rc, detail, compiles = autoinstall()
    assert (rc, compiles) == (6, 1) and "hello.c:" in detail and "error" in detail
    rc, detail, compiles = autoinstall()  # the same inputs: the same failure, no compile
    assert (rc, compiles) == (6, 0) and "not retried" in detail and "hello.c:" in detail
    rc, detail, compiles = autoinstall("--force")
    assert (rc, compiles) == (6, 1) and "not retried" not in detail
    fixed = root / "usr/src/broken-1/hello.c"
    fixed.write_text(fixed.read_text().replace("\nthis is not C;\n", "\n"))
    rc, detail, compiles = autoinstall()
    assert (rc, compiles) == (0, 1), detail
