"""The DKMS lifecycle on real kernel trees: add, build, install, status, uninstall, remove,
autoinstall; originals saved and restored; depmod once per kernel; signing; the toolchain
reaching every make of a compound MAKE line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, HEADER, extmod, make_root, package, snapshot

pytestmark = pytest.mark.slow


def depmod_counter(tmp: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose first `depmod` logs each call, then runs the real one."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    calls = tmp / "depmod-calls"
    (bin_dir / "depmod").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\nexec /usr/sbin/depmod "$@"\n'
    )
    (bin_dir / "depmod").chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}, calls


def calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def module_tree_digest(kdir: Path) -> dict[str, str]:
    """Every file under /lib/modules/KVER (but the build link) with its sha256."""
    out = {}
    for p in sorted(kdir.rglob("*")):
        if p.name == "build" and p.parent == kdir:
            continue
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(kdir))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(kdir)) + "/"] = ""
    return out


def test_round_trip_restores_module_tree_and_runs_depmod_once(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    gcc = trees["gcc"]
    kver = gcc["kver"]
    root = make_root(tmp_path / "root", kver, gcc["build"])
    kdir = root / "lib/modules" / kver
    # An in-tree module the package's twofile.ko replaces (DEST_MODULE_LOCATION is honoured
    # as written with install.location = dkms.conf), and an in-tree hello elsewhere that the
    # /extra one only shadows.
    (kdir / "kernel/drivers/misc").mkdir(parents=True)
    (kdir / "kernel/drivers/misc/twofile.ko").write_bytes(b"in-tree twofile\n")
    (kdir / "kernel/lib").mkdir(parents=True)
    (kdir / "kernel/lib/hello.ko").write_bytes(b"in-tree hello\n")
    subprocess.run(["depmod", "-b", root, "-a", kver], check=True, capture_output=True)
    before = module_tree_digest(kdir)
    env, depmod_log = depmod_counter(tmp_path)
    env["EXTMOD_INSTALL_LOCATION"] = "dkms.conf"

    r = extmod(["--root", root, "install", EXAMPLES / "dkms-pair", "-k", kver], env=env)
    assert r.rc == 0, r.err
    assert len(calls(depmod_log)) == 1, "depmod once per kernel per command"
    assert (kdir / "extra/hello.ko").exists()
    assert (kdir / "kernel/drivers/misc/twofile.ko").read_bytes() != b"in-tree twofile\n"
    assert (
        root
        / "var/lib/extmod/originals"
        / kver
        / "x86_64/extmod-pair/kernel/drivers/misc"
        / "twofile.ko"
    ).read_bytes() == b"in-tree twofile\n"
    dep = (kdir / "modules.dep").read_text()
    assert "extra/hello.ko:" in dep and "kernel/drivers/misc/twofile.ko:" in dep

    r = extmod(["--root", root, "status"], env=env)
    assert r.out.strip() == f"extmod-pair/1.0, {kver}, x86_64: installed (original module saved)"
    r = extmod(["--root", root, "--json", "status", "extmod-pair", "-k", kver], env=env)
    row = r.json()[0]
    assert row["state"] == "installed" and row["original_module_saved"] is True
    assert row["shadows"] == ["kernel/lib/hello.ko"]

    r = extmod(["--root", root, "uninstall", "extmod-pair", "-k", kver], env=env)
    assert r.rc == 0, r.err
    assert len(calls(depmod_log)) == 2
    assert module_tree_digest(kdir) == before, "uninstall must restore /lib/modules/KVER"
    r = extmod(["--root", root, "status"], env=env)
    assert r.out.strip() == f"extmod-pair/1.0, {kver}, x86_64: built"

    r = extmod(["--root", root, "remove", "extmod-pair", "--all"], env=env)
    assert r.rc == 0, r.err
    assert module_tree_digest(kdir) == before
    assert extmod(["--root", root, "status"]).out.strip() == ""
    state = root / "var/lib/extmod"
    assert not any((state / "packages").iterdir())
    assert not (state / "installed").exists() or not any((state / "installed").rglob("*.json"))


def test_autoinstall_two_packages_one_depmod_and_signature(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    gcc = trees["gcc"]
    kver = gcc["kver"]
    root = make_root(tmp_path / "root", kver, gcc["build"])
    kdir = root / "lib/modules" / kver
    env, depmod_log = depmod_counter(tmp_path)
    vpoll = Path(trees["dkms"]["packages"]["vpoll-dkms"]["src"])
    for src in (EXAMPLES / "dkms-pair", vpoll):
        r = extmod(["--root", root, "add", src], env=env)
        assert r.rc == 0, r.err
    assert (root / "usr/src/vpoll-0.1/dkms.conf").exists()  # added as DKMS does: copied
    r = extmod(["--root", root, "--json", "autoinstall"], env=env)
    assert r.rc == 0, r.err
    assert calls(depmod_log) == [f"-a -b {root} {kver}"]
    assert sorted(str(p.relative_to(kdir)) for p in kdir.rglob("*.ko")) == [
        "updates/dkms/hello.ko",
        "updates/dkms/twofile.ko",
        "updates/dkms/vpoll.ko",
    ]

    # Debian's kernel has CONFIG_MODULE_SIG: modules are signed with extmod's MOK key.
    info = subprocess.run(
        ["modinfo", kdir / "updates/dkms/vpoll.ko"], capture_output=True, text=True, check=True
    ).stdout
    assert "signer:         extmod module signing key" in info
    assert "sig_hashalgo:   sha256" in info
    key = root / "var/lib/extmod/keys/mok.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.parent.stat().st_mode & 0o777 == 0o700
    key_digest = hashlib.sha256(key.read_bytes()).hexdigest()

    # A second autoinstall finds everything up to date: no build, no depmod, same key.
    r = extmod(["--root", root, "--json", "autoinstall", "-k", kver], env=env)
    assert r.rc == 0, r.err
    assert {o["action"] for o in r.json()["outcomes"]} == {"up to date"}
    assert len(calls(depmod_log)) == 1
    # kernel-prerm takes every package's modules and builds for the kernel away.
    r = extmod(["--root", root, "kernel-prerm", kver], env=env)
    assert r.rc == 0, r.err
    assert list(kdir.rglob("*.ko")) == []
    assert hashlib.sha256(key.read_bytes()).hexdigest() == key_digest
    r = extmod(["--root", root, "kernel-postinst", kver], env=env)
    assert r.rc == 0, r.err
    assert len(list(kdir.rglob("*.ko"))) == 3
    assert hashlib.sha256(key.read_bytes()).hexdigest() == key_digest, "key never replaced"


def test_compound_make_builds_every_part_with_clang(trees: dict[str, Any], tmp_path: Path) -> None:
    thin = trees["thinlto"]
    root = make_root(tmp_path / "root", thin["kver"], thin["build"])
    r = extmod(["--root", root, "--json", "build", EXAMPLES / "dkms-pair", "-k", thin["kver"]])
    assert r.rc == 0, r.err
    tree = (
        root / "var/lib/extmod/build/extmod-pair/1.0" / thin["kver"] / "dkms/extmod-pair/1.0/build"
    )
    for part, obj in (("hello", "hello.o"), ("twofile", "main.o"), ("twofile", "answer.o")):
        cmd = (tree / part / f".{obj}.cmd").read_text()
        assert cmd.startswith("cmd_") and "clang-16" in cmd.split("\n")[0], (part, cmd[:200])
    built = root / "var/lib/extmod/packages/extmod-pair/1.0/built" / thin["kver"] / "x86_64"
    info = json.loads((built / "build.json").read_text())
    assert info["compiler"].startswith("Debian clang version 16")
    assert {m["file"] for m in info["modules"]} == {"hello.ko", "twofile.ko"}
    assert info["signed"] is True  # the tiny kernel has CONFIG_MODULE_SIG (and no _FORCE)

    # The DKMS way (toolchain appended to the whole line, so to the last make only) fails on
    # the first part: the control that shows the test can fail.
    plain = subprocess.run(
        [
            "bash",
            "-c",
            f"make -C {thin['build']} M={tree}/hello modules && "
            f"make -C {thin['build']} M={tree}/twofile modules LLVM=-16",
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert plain.returncode != 0
    assert (
        "unrecognized command-line option" in plain.stdout + plain.stderr
        or "not found" in plain.stdout + plain.stderr
    )


def test_two_kernels_of_one_package_build_at_once(trees: dict[str, Any], tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", trees["gcc"]["kver"], trees["gcc"]["build"])
    link = root / "lib/modules" / trees["thinlto"]["kver"] / "build"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(trees["thinlto"]["build"], link.parent))
    assert extmod(["--root", root, "add", EXAMPLES / "dkms-pair"]).rc == 0
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "extmod",
                "--root",
                str(root),
                "-q",
                "build",
                "extmod-pair/1.0",
                "-k",
                k,
            ],
            env={
                "PATH": os.environ["PATH"],
                "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
            },
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (trees["gcc"]["kver"], trees["thinlto"]["kver"])
    ]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    assert all(rc == 0 for rc, _ in results), results
    r = extmod(["--root", root, "status"])
    assert sorted(r.out.splitlines()) == sorted(
        [
            f"extmod-pair/1.0, {trees['gcc']['kver']}, x86_64: built",
            f"extmod-pair/1.0, {trees['thinlto']['kver']}, x86_64: built",
        ]
    )


def test_bad_dkms_conf_is_one_line_and_writes_nothing(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    gcc = trees["gcc"]
    root = make_root(tmp_path / "root", gcc["kver"], gcc["build"])
    src = tmp_path / "bad-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(
        'PACKAGE_NAME="bad"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="hello"\n'
    )
    before = snapshot(root)
    r = extmod(["--root", root, "install", src, "-k", gcc["kver"]])
    assert r.rc == 3, r.err
    assert r.err.strip().splitlines() == [
        f"extmod: error: {src}/dkms.conf: DEST_MODULE_LOCATION[0]: not set"
    ]
    assert snapshot(root) == before, "a bad dkms.conf must leave the root as it was"


def test_make_line_as_dkms_reads_it(trees: dict[str, Any], tmp_path: Path) -> None:
    """MAKE is what dkms 3.0.10 makes of it (safe_source, then invoke_command's eval): a
    value over four lines is one command line, DKMS's variables and the directives named
    late in single quotes are expanded, the file's own variable (BDIR) is gone by then, and
    an /etc/dkms override that extends MAKE[0] is heard. Were BDIR still set, the first
    make would be asked for a target "/nonexistent" and fail; were the lines apart, the
    first would be a bare make in the kernel tree."""
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    src = tmp_path / "late"
    shutil.copytree(EXAMPLES / "dkms-pair", src, symlinks=True)
    conf = src / "dkms.conf"
    text = conf.read_text().replace('PACKAGE_NAME="extmod-pair"', 'PACKAGE_NAME="late-vars"')
    lines = [ln for ln in text.splitlines() if not ln.startswith(("MAKE[0]=", "BDIR=", "CLEAN="))]
    lines += [
        "BDIR=/nonexistent",
        "CLEAN=true",
        "MAKE[0]='make -C ${kernel_source_dir}",
        "    M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build/hello modules ${BDIR}",
        "    && make -C ${kernel_source_dir}",
        "    M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build/twofile modules'",
    ]
    conf.write_text("\n".join(lines) + "\n")
    (root / "etc/dkms").mkdir(parents=True)
    (root / "etc/dkms/late-vars.conf").write_text(
        'EXTRA="KCFLAGS=-DEXTMOD_LATE=1 V=1"\nMAKE[0]="${MAKE[0]} $EXTRA"\n'
    )
    res = extmod(["--root", root, "install", src, "-k", kver])
    assert res.rc == 0, res.err
    log = next((root / "var/lib/extmod/packages/late-vars/1.0/built").rglob("make.log"))
    assert "-DEXTMOD_LATE=1" in log.read_text()  # V=1 shows each compile
    assert sorted(p.name for p in (root / "lib/modules" / kver).rglob("*.ko")) == [
        "hello.ko",
        "twofile.ko",
    ]


def test_status_names_installed_files_changed_or_deleted(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 22: an installed module changed or deleted since extmod installed it is named
    by status and doctor; dkms status adds 3.2.2's suffix (3.0.10's once per module); --force
    puts the built bytes back."""
    from conftest import dkms

    gcc = trees["gcc"]
    kver = gcc["kver"]
    root = make_root(tmp_path / "root", kver, gcc["build"])
    assert extmod(["--root", root, "-q", "install", EXAMPLES / "dkms-pair", "-k", kver]).rc == 0
    kdir = root / "lib/modules" / kver / "updates/dkms"
    hello, twofile = kdir / "hello.ko", kdir / "twofile.ko"
    line = f"extmod-pair/1.0, {kver}, x86_64: installed"
    assert extmod(["--root", root, "status"]).out.strip() == line
    good = hello.read_bytes()

    # the same size, another byte, the mtime set back: only the ctime tells
    st = hello.stat()
    hello.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    os.utime(hello, ns=(st.st_atime_ns, st.st_mtime_ns))
    twofile.unlink()
    out = extmod(["--root", root, "status"]).out.strip()
    assert out == (
        f"{line} (changed since installed: updates/dkms/hello.ko) "
        "(deleted since installed: updates/dkms/twofile.ko)"
    ), out
    d = extmod(["--root", root, "--json", "doctor", "-k", kver])
    warns = [
        c["detail"] for c in json.loads(d.out) if c["area"] == "state" and c["status"] == "warn"
    ]
    assert any("updates/dkms/twofile.ko deleted" in w for w in warns), warns
    # dkms 3.2.2 says it once per package; answering as 3.0.10, once per module
    r = dkms(root, "status", "-k", kver)
    assert r.stdout == f"{line} (Differences between built and installed modules)\n", r.stdout
    r = dkms(root, "status", "-k", kver, env={"EXTMOD_DKMS_VERSION": "3.0.10"})
    assert r.stdout.strip().startswith(line), r.stdout
    assert r.stdout.count("(WARNING! Diff between built and installed module!)") == 2, r.stdout

    assert extmod(["--root", root, "-q", "install", "extmod-pair", "-k", kver, "--force"]).rc == 0
    # the changed hello.ko is nobody's install now: kept aside as an original, as any
    # same-named module in the way is, and put back by uninstall; nothing is lost
    assert extmod(["--root", root, "status"]).out.strip() == f"{line} (original module saved)"
    assert hello.read_bytes() == good and twofile.exists()


def test_a_staged_root_moved_or_copied_uses_its_own_paths(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 22: what is recorded under a root is relative to it. After ``mv A B`` the
    package installs from B; after ``cp -a B C`` and a change to C's source, C builds from
    C's /usr/src, not B's."""
    gcc = trees["gcc"]
    kver = gcc["kver"]
    a = make_root(tmp_path / "A", kver, gcc["build"])
    assert extmod(["--root", a, "-q", "install", EXAMPLES / "dkms-pair", "-k", kver]).rc == 0
    rec = json.loads((a / "var/lib/extmod/packages/extmod-pair/1.0/added.json").read_text())
    assert rec["source"] == "usr/src/extmod-pair-1.0", rec
    link = a / "var/lib/extmod/packages/extmod-pair/1.0/source"
    assert not os.readlink(link).startswith("/"), os.readlink(link)

    b = tmp_path / "B"
    a.rename(b)
    r = extmod(["--root", b, "--json", "install", "extmod-pair", "-k", kver, "--force"])
    assert r.rc == 0, r.err
    assert str(tmp_path / "A") not in r.out + r.err

    c = tmp_path / "C"
    subprocess.run(["cp", "-a", str(b), str(c)], check=True)
    hello = c / "usr/src/extmod-pair-1.0/hello/hello.c"
    hello.write_text(hello.read_text().replace("extmod-hello: loaded", "extmod-hello: copied"))
    r = extmod(["--root", c, "-q", "install", "extmod-pair", "-k", kver])
    assert r.rc == 0, r.err
    ko = c / "lib/modules" / kver / "updates/dkms/hello.ko"
    assert b"extmod-hello: copied" in ko.read_bytes()
    assert (
        b"extmod-hello: copied"
        not in (b / "lib/modules" / kver / "updates/dkms/hello.ko").read_bytes()
    )


def test_kernel_prerm_forgets_everything_kept_for_the_kernel(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 22: a kernel removed leaves nothing of extmod's behind: its builds, the build
    dirs of every package (a failed one's, with its remembered failure), verify's records;
    doctor names a kernel that went without the hook."""
    gcc = trees["gcc"]
    kver = gcc["kver"]
    root = make_root(tmp_path / "root", kver, gcc["build"])
    state = root / "var/lib/extmod"
    broken = package(
        tmp_path / "broken-1.0",
        "broken",
        {"broken.c": HEADER + "int x = ;\n"},
        "obj-m := broken.o\n",
    )
    for src in (EXAMPLES / "dkms-pair", broken):
        assert extmod(["--root", root, "-q", "add", src]).rc == 0
    assert extmod(["--root", root, "-q", "autoinstall"]).rc != 0  # broken fails
    assert list(state.glob(f"build/broken/1.0/{kver}/.extmod/failed.json"))
    record = state / "verify" / kver / "x86_64" / "extmod-pair.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}")  # what extmod verify leaves (its content does not matter here)

    # the kernel gone without extmod's hook: doctor says so, and how to forget it
    kdir = root / "lib/modules" / kver
    kdir.rename(tmp_path / "away")
    checks = json.loads(extmod(["--root", root, "--json", "doctor"]).out)
    gone = [c for c in checks if c["area"] == "state" and c["subject"] == kver]
    assert gone and gone[0]["fix"] == f"extmod kernel-prerm {kver}", gone
    (tmp_path / "away").rename(kdir)

    r = extmod(["--root", root, "kernel-prerm", kver])
    assert r.rc == 0, r.err
    assert not list(state.glob(f"build/*/*/{kver}")), list(state.glob("build/**"))
    assert not list(state.glob(f"packages/*/*/built/{kver}"))
    assert not (state / "verify" / kver).exists()
    assert not list(kdir.rglob("*.ko"))
    checks = json.loads(extmod(["--root", root, "--json", "doctor"]).out)
    assert not [c for c in checks if c["area"] == "state" and c["status"] != "ok"], checks


def test_kept_build_dirs_are_shown_and_bounded(trees: dict[str, Any], tmp_path: Path) -> None:
    """Issue 22: the kept build dirs are listed by cache show, and held to
    build.keep_max_size after a command that built (least recently used first)."""
    gcc = trees["gcc"]
    kver = gcc["kver"]
    root = make_root(tmp_path / "root", kver, gcc["build"])
    vpoll = Path(trees["dkms"]["packages"]["vpoll-dkms"]["src"])
    for src in (EXAMPLES / "dkms-pair", vpoll):
        assert extmod(["--root", root, "-q", "add", src]).rc == 0
    assert extmod(["--root", root, "-q", "autoinstall"]).rc == 0
    shown = json.loads(extmod(["--root", root, "--json", "cache", "show"]).out)
    kept = {(r["package"], r["kernel"]): r for r in shown if r["kind"] == "build"}
    assert set(kept) == {("extmod-pair", kver), ("vpoll", kver)}, shown
    assert all(r["bytes"] > 0 and Path(r["dir"]).is_dir() for r in kept.values())

    # a bound just under both: the next command that builds (extmod-pair again) drops the
    # least recently used (vpoll's) and keeps the one it just used
    pair, other = kept[("extmod-pair", kver)]["bytes"], kept[("vpoll", kver)]["bytes"]
    bound = pair + other // 2  # the pair's dir, rebuilt, stays about its size
    env = {"EXTMOD_BUILD_KEEP_MAX_SIZE": str(bound)}
    r = extmod(["--root", root, "-q", "install", "extmod-pair", "-k", kver, "--force"], env=env)
    assert r.rc == 0, r.err
    shown = json.loads(extmod(["--root", root, "--json", "cache", "show"]).out)
    assert [x["package"] for x in shown if x["kind"] == "build"] == ["extmod-pair"], shown
    assert extmod(["--root", root, "status"]).out.count("installed") == 2  # builds stay

    env = {"EXTMOD_BUILD_KEEP_MAX_SIZE": "1"}
    p = extmod(["--root", root, "--json", "cache", "prune"], env=env)
    assert p.rc == 0 and json.loads(p.out)["build_dirs"] == 1, p.out
    shown = json.loads(extmod(["--root", root, "--json", "cache", "show"]).out)
    assert not [x for x in shown if x["kind"] == "build"]
