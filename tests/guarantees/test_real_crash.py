"""Issue 5 on the real gcc headers: every crash point (faults.POINTS) in install, uninstall,
remove and autoinstall, hit with SIGKILL; after each, no partial .ko is in place, status
tells the truth, and a re-run ends where a clean run ends. Four autoinstalls at once share
one root. A full disk during the build and during the install loses nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, REPO, extmod, make_root
from extmod.core import faults

pytestmark = pytest.mark.slow


def tree_state(kdir: Path) -> dict[str, str]:
    """Every file under /lib/modules/KVER but the build link and depmod's output."""
    out = {}
    for p in sorted(kdir.rglob("*")):
        rel = str(p.relative_to(kdir))
        if rel == "build" or (p.parent == kdir and p.name.startswith("modules.")):
            continue
        if p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def copy_of(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(template, root, symlinks=True)
    return root


@pytest.fixture(scope="module")
def templates(trees: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Roots in three states: added (not built), built, installed; plus the reference
    module trees a clean run leaves: after install, after uninstall."""
    gcc = trees["gcc"]
    base = tmp_path_factory.mktemp("crash")
    added = make_root(base / "added", gcc["kver"], gcc["build"])
    kdir = added / "lib/modules" / gcc["kver"]
    # An in-tree twofile.ko that the install moves away (install.location = dkms.conf).
    (kdir / "kernel/drivers/misc").mkdir(parents=True)
    (kdir / "kernel/drivers/misc/twofile.ko").write_bytes(b"in-tree twofile\n")
    env = {"EXTMOD_INSTALL_LOCATION": "dkms.conf"}
    assert extmod(["--root", added, "add", EXAMPLES / "dkms-pair"], env=env).rc == 0
    built = base / "built"
    shutil.copytree(added, built, symlinks=True)
    assert extmod(["--root", built, "build", "extmod-pair/1.0", "-k", gcc["kver"]], env=env).rc == 0
    installed = base / "installed"
    shutil.copytree(built, installed, symlinks=True)
    assert (
        extmod(["--root", installed, "install", "extmod-pair/1.0", "-k", gcc["kver"]], env=env).rc
        == 0
    )
    return {"added": added, "built": built, "installed": installed}


# point -> (template, command that passes it, the command that ends in the intended state)
CASES = {
    "build:published": ("added", ["autoinstall"], "installed"),
    # an upgrade (--force builds anew) stages the new modules before the old go
    "install:staged": ("installed", ["install", "extmod-pair/1.0", "--force"], "installed"),
    "install:journaled": ("built", ["install", "extmod-pair/1.0"], "installed"),
    "install:original": ("built", ["install", "extmod-pair/1.0"], "installed"),
    "install:file": ("built", ["install", "extmod-pair/1.0"], "installed"),
    "install:recorded": ("built", ["install", "extmod-pair/1.0"], "installed"),
    "uninstall:journaled": ("installed", ["uninstall", "extmod-pair/1.0"], "built"),
    "uninstall:file": ("installed", ["uninstall", "extmod-pair/1.0"], "built"),
    "uninstall:recorded": ("installed", ["uninstall", "extmod-pair/1.0"], "built"),
    "remove:unbuilt": ("installed", ["remove", "extmod-pair"], "removed"),
    "depmod:before": ("built", ["install", "extmod-pair/1.0"], "installed"),
    # the build store's object half written (issue 32): the next build files it whole
    "store:filing": ("added", ["autoinstall"], "installed"),
}


def test_every_crash_point_is_tested() -> None:
    assert set(CASES) == set(faults.POINTS)


@pytest.mark.parametrize("point", faults.POINTS)
def test_crash_then_rerun(
    point: str, templates: dict[str, Path], trees: dict[str, Any], tmp_path: Path
) -> None:
    kver = trees["gcc"]["kver"]
    template, command, intended = CASES[point]
    root = copy_of(templates[template], tmp_path)
    kdir = root / "lib/modules" / kver
    built_dir = root / "var/lib/extmod/packages/extmod-pair/1.0/built" / kver / "x86_64"
    kflag = ["--all"] if command[0] in ("uninstall", "remove") else ["-k", kver]
    env = {"EXTMOD_INSTALL_LOCATION": "dkms.conf"}

    r = extmod(["--root", root, *command, *kflag], env={**env, "EXTMOD_CRASH_AT": point})
    assert r.rc == -9, f"{point} was not reached: {r.rc} {r.err}"

    # No partial .ko in place: every module file is the in-tree original or a whole built
    # module (what a crash leaves half-written is a temp file, never the real name).
    good = {hashlib.sha256(b"in-tree twofile\n").hexdigest()}
    if (built_dir / "module").is_dir():
        good |= {
            hashlib.sha256(p.read_bytes()).hexdigest() for p in (built_dir / "module").iterdir()
        }
    # the modules a clean install left are whole too (an upgrade replaces them)
    good |= set(tree_state(templates["installed"] / "lib/modules" / kver).values())
    for rel, digest in tree_state(kdir).items():
        if rel.endswith(".ko"):
            assert digest in good, f"{rel} is not a whole module after {point}"

    # status tells the truth: what it calls installed is on disk, and an interrupted
    # operation is named.
    r = extmod(["--root", root, "--json", "status"], env=env)
    assert r.rc == 0, r.err
    rows = r.json()
    journal = root / "var/lib/extmod/journal"
    pending = list(journal.glob("*/*/*.json")) if journal.is_dir() else []
    for row in rows:
        if row["state"] == "installed" and not row["interrupted"]:
            rec = json.loads(
                (
                    root / "var/lib/extmod/installed" / kver / "x86_64" / "extmod-pair.json"
                ).read_text()
            )
            for f in rec["files"]:
                assert (kdir / f["path"]).exists(), f"status says installed: {f['path']}"
    assert bool(pending) == any(row["interrupted"] for row in rows), (pending, rows)

    # A re-run of the same command (a new extmod process) ends in the intended state.
    r = extmod(["--root", root, *command, *kflag], env=env)
    assert r.rc == 0, r.err
    assert not list(root.rglob("*.extmod-tmp")), "temp files left behind"
    assert not journal.exists() or not any(journal.rglob("*")), "journal left behind"
    expected = {
        "installed": templates["installed"],
        "built": templates["built"],
        "removed": templates["built"],
    }[intended]
    want, got = tree_state(expected / "lib/modules" / kver), tree_state(kdir)
    assert set(got) == set(want)
    if point == "store:filing":  # the re-run filed the build whole, beside no leftover
        objects = [d for d in (root / "var/lib/extmod/store").glob("??/*") if d.is_dir()]
        assert len(objects) == 1 and (objects[0] / "object.json").is_file(), objects
    if (built_dir / "module").is_dir():  # what the re-run built here (store:filing) too
        good |= {
            hashlib.sha256(p.read_bytes()).hexdigest() for p in (built_dir / "module").iterdir()
        }
    for rel, digest in got.items():
        # A module built in this root (build:published builds afresh) is itself; the rest
        # is byte for byte what a clean run leaves.
        assert digest in good if rel.endswith(".ko") else digest == want[rel], rel
    r = extmod(["--root", root, "status"], env=env)
    lines = r.out.strip().splitlines()
    if intended == "installed":
        assert lines == [f"extmod-pair/1.0, {kver}, x86_64: installed (original module saved)"]
        dep = (kdir / "modules.dep").read_text()
        assert "kernel/drivers/misc/twofile.ko:" in dep and "extra/hello.ko:" in dep
    elif intended == "built":
        assert lines == [f"extmod-pair/1.0, {kver}, x86_64: built"]
        assert "extra/hello.ko" not in (kdir / "modules.dep").read_text()
    else:
        assert lines == []


def test_four_autoinstalls_at_once(trees: dict[str, Any], tmp_path: Path) -> None:
    gcc = trees["gcc"]
    kver = gcc["kver"]
    root = make_root(tmp_path / "root", kver, gcc["build"])
    vpoll = Path(trees["dkms"]["packages"]["vpoll-dkms"]["src"])
    for src in (EXAMPLES / "dkms-pair", vpoll):
        assert extmod(["--root", root, "add", src]).rc == 0
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO / "src"), "LANG": "C.UTF-8"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "extmod",
                "--root",
                str(root),
                "--json",
                "autoinstall",
                "-k",
                kver,
            ],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert [rc for rc, _, _ in results] == [0, 0, 0, 0], results
    actions = [sorted(o["action"] for o in json.loads(out)["outcomes"]) for _, out, _ in results]
    # Each pair was built exactly once across the four; the others waited and found it.
    built = sum(a.count("built") for a in actions)
    assert built == 2, actions
    assert any("waiting for lock" in err and "held by pid" in err for _, _, err in results)
    r = extmod(["--root", root, "status"])
    assert sorted(r.out.strip().splitlines()) == [
        f"extmod-pair/1.0, {kver}, x86_64: installed",
        f"vpoll/0.1, {kver}, x86_64: installed",
    ]
    assert sorted(
        str(p.relative_to(root / "lib/modules" / kver))
        for p in (root / "lib/modules" / kver).rglob("*.ko")
    ) == ["updates/dkms/hello.ko", "updates/dkms/twofile.ko", "updates/dkms/vpoll.ko"]
    assert not list(root.rglob("*.extmod-tmp"))


def _in_small_tmpfs(target: Path, size: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """argv with a full tmpfs of ``size`` mounted over the empty dir ``target``, in a
    private mount namespace (gone with it)."""
    script = (
        f'set -e\nmount -t tmpfs -o size={size} extmod-full "$1"\n'
        'dd if=/dev/zero of="$1/.fill" bs=4k 2>/dev/null || true\n'
        'shift\nset +e\nexec "$@"\n'
    )
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO / "src"),
        "LANG": "C.UTF-8",
        "EXTMOD_INSTALL_LOCATION": "dkms.conf",
    }
    return subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "bash",
            "-c",
            script,
            "x",
            str(target),
            *argv,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_disk_full_during_install_loses_nothing(
    templates: dict[str, Path], trees: dict[str, Any], tmp_path: Path
) -> None:
    kver = trees["gcc"]["kver"]
    root = copy_of(templates["built"], tmp_path)
    kdir = root / "lib/modules" / kver
    before = tree_state(kdir)
    # /lib/modules/KVER/extra on a tmpfs too small for hello.ko (the in-tree twofile.ko
    # lives elsewhere): the install fails on ENOSPC and is rolled back.
    extra = kdir / "extra"
    extra.mkdir()
    res = _in_small_tmpfs(
        extra,
        "4k",
        [
            sys.executable,
            "-m",
            "extmod",
            "--root",
            str(root),
            "install",
            "extmod-pair/1.0",
            "-k",
            kver,
        ],
    )
    extra.rmdir()
    assert res.returncode == 7, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "No space left on device" in last and "rolled back" in last, last
    assert tree_state(kdir) == before
    r = extmod(["--root", root, "status"])
    assert r.out.strip() == f"extmod-pair/1.0, {kver}, x86_64: built"
    assert not (root / "var/lib/extmod/journal").exists() or not list(
        (root / "var/lib/extmod/journal").glob("*/*/*.json")
    )


def test_disk_full_during_build_loses_nothing(
    templates: dict[str, Path], trees: dict[str, Any], tmp_path: Path
) -> None:
    kver = trees["gcc"]["kver"]
    root = copy_of(templates["installed"], tmp_path)
    kdir = root / "lib/modules" / kver
    before = tree_state(kdir)
    build_dir = root / "var/lib/extmod/build"
    shutil.rmtree(build_dir)
    build_dir.mkdir()
    res = _in_small_tmpfs(
        build_dir,
        "256k",
        [
            sys.executable,
            "-m",
            "extmod",
            "--root",
            str(root),
            "build",
            "extmod-pair/1.0",
            "-k",
            kver,
            "--force",
        ],
    )
    assert res.returncode in (6, 7), res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("extmod: error: ") and "No space left on device" in last, last
    # The installed modules and the recorded build are as they were.
    assert tree_state(kdir) == before
    r = extmod(["--root", root, "status"])
    assert r.out.strip() == f"extmod-pair/1.0, {kver}, x86_64: installed (original module saved)"


def _start(root: Path, *args: str) -> subprocess.Popen[str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO / "src"), "LANG": "C.UTF-8"}
    return subprocess.Popen(
        [sys.executable, "-m", "extmod", "--root", str(root), "--json", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_two_installs_of_one_package_at_once(trees: dict[str, Any], tmp_path: Path) -> None:
    """Issue 32: both succeed; the pair is built once, installed once; nothing is left
    half-written and status tells one install."""
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    procs = [_start(root, "install", str(EXAMPLES / "dkms-pair"), "-k", kver) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert [rc for rc, _, _ in results] == [0, 0], results
    actions = [o["action"] for _, out, _ in results for o in json.loads(out)["outcomes"]]
    assert actions.count("built") == 1, actions
    r = extmod(["--root", root, "status"])
    assert r.out.strip().splitlines() == [f"extmod-pair/1.0, {kver}, x86_64: installed"]
    assert not list(root.rglob("*.extmod-tmp"))
    assert sorted(
        str(p.relative_to(root / "lib/modules" / kver))
        for p in (root / "lib/modules" / kver).rglob("*.ko")
    ) == ["updates/dkms/hello.ko", "updates/dkms/twofile.ko"]


def test_autoinstall_while_remove_runs(trees: dict[str, Any], tmp_path: Path) -> None:
    """Issue 32: a remove of an installed package and an autoinstall started beside it
    both end 0, in either order; the package ends removed, its modules gone from the
    kernel's tree, no record left and nothing half-written."""
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    assert extmod(["--root", root, "install", EXAMPLES / "dkms-pair", "-k", kver]).rc == 0
    remove = _start(root, "remove", "extmod-pair", "--all")
    auto = _start(root, "autoinstall", "-k", kver)
    results = [(p.wait(timeout=600), *p.communicate()) for p in (remove, auto)]
    assert [rc for rc, _, _ in results] == [0, 0], results
    assert extmod(["--root", root, "status"]).out.strip() == ""
    assert not list((root / "lib/modules" / kver).rglob("*.ko"))
    assert not list(root.rglob("*.extmod-tmp"))
    state = root / "var/lib/extmod"
    assert (
        not list((state / "installed").rglob("*.json")) if (state / "installed").exists() else True
    )
    assert "extra/hello.ko" not in (root / "lib/modules" / kver / "modules.dep").read_text()


def _wait_for(what: Path, gone: bool = False, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while what.exists() == gone:
        assert time.monotonic() < end, f"{what} {'still there' if gone else 'never came'}"
        time.sleep(0.05)


def test_remove_while_an_autoinstall_builds(trees: dict[str, Any], tmp_path: Path) -> None:
    """The race of test_autoinstall_while_remove_runs, made certain: an autoinstall that
    found the package added runs make; remove unregisters it then; make goes on. Both end
    0 (the remove took its dir away under the build: the build failed, exit 7), and once
    the remove is done nothing of the package is left."""
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    gate = tmp_path / "gate"
    gate.mkdir()
    src = tmp_path / "dkms-pair"
    shutil.copytree(EXAMPLES / "dkms-pair", src)
    conf = src / "dkms.conf"
    text = conf.read_text().replace(
        'MAKE[0]="', f'MAKE[0]="touch {gate}/make; while [ ! -e {gate}/go ]; do sleep 0.05; done; '
    )
    conf.write_text(text)
    assert extmod(["--root", root, "add", src]).rc == 0
    added = root / "var/lib/extmod/packages/extmod-pair/1.0/added.json"
    assert added.is_file()
    auto = _start(root, "autoinstall", "-k", kver)
    _wait_for(gate / "make")
    remove = _start(root, "remove", "extmod-pair", "--all")
    _wait_for(added, gone=True)
    (gate / "go").touch()
    results = [(p.wait(timeout=600), *p.communicate()) for p in (auto, remove)]
    assert [rc for rc, _, _ in results] == [0, 0], results
    assert extmod(["--root", root, "status"]).out.strip() == ""
    assert not list((root / "lib/modules" / kver).rglob("*.ko"))
    state = root / "var/lib/extmod"
    assert not (state / "packages/extmod-pair").exists()
    assert not (state / "build/extmod-pair").exists()
    assert not list(root.rglob("*.extmod-tmp"))
