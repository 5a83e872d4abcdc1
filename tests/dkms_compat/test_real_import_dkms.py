"""`extmod import-dkms`: Debian's real dkms 3.0.10 registers, builds and installs packages
in a staged root (the real linux-headers packages unpacked there); extmod then takes them
over without rebuilding what DKMS built.

dkms runs in a private mount namespace where the staged /usr/src, /lib/modules and
/var/lib/dkms are bound over the machine's, so it runs with its own defaults (its key in
/var/lib/dkms, /usr/src links), exactly as on a system; nothing is written outside the
staged root.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, extmod, snapshot, unpack_headers

pytestmark = pytest.mark.slow

_NS = """set -e
r="$1"; shift
mount --bind "$r/etc/os-release" /etc/os-release
mount --bind "$r/usr/src" /usr/src
mount --bind "$r/lib/modules" /lib/modules
mkdir -p /var/lib/dkms /etc/dkms
mount --bind "$r/var/lib/dkms" /var/lib/dkms
mount -t tmpfs -o mode=755 extmod-test /etc/dkms
exec "$@"
"""


def _dkms(trees: dict[str, Any], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(root),
    }
    res = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "bash",
            "-c",
            _NS,
            "ns",
            str(root),
            "bash",
            trees["dkms"]["dkms"],
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def _stage(tmp: Path, trees: dict[str, Any], distro: str = "debian") -> Path:
    root = unpack_headers(tmp / "root", trees, distro)
    (root / "var/lib/dkms").mkdir(parents=True)
    src = root / "usr/src"
    shutil.copytree(EXAMPLES / "dkms-pair", src / "extmod-pair-1.0", symlinks=True)
    for deb in ("acpi-call-dkms", "vpoll-dkms"):
        pkg = Path(trees["dkms"]["packages"][deb]["src"])
        shutil.copytree(pkg, src / pkg.name, symlinks=True)
    return root


def test_import_dkms_takes_over_without_rebuilding(tmp_path: Path, trees: dict[str, Any]) -> None:
    kver = trees["gcc"]["kver"]
    root = _stage(tmp_path, trees)
    for name, version in (("extmod-pair", "1.0"), ("acpi-call", "1.2.2"), ("vpoll", "0.1")):
        _dkms(trees, root, "add", "-m", name, "-v", version)
    _dkms(trees, root, "install", "-m", "extmod-pair", "-v", "1.0", "-k", kver)
    _dkms(trees, root, "build", "-m", "acpi-call", "-v", "1.2.2", "-k", kver)
    mods = root / "lib/modules" / kver
    by_dkms = {p.relative_to(mods): p.read_bytes() for p in mods.rglob("*.ko*")}
    assert sorted(map(str, by_dkms)) == ["updates/dkms/hello.ko", "updates/dkms/twofile.ko"]
    dkms_key = (root / "var/lib/dkms/mok.key").read_bytes()

    # --dry-run: the plan, and not one byte changed.
    before = snapshot(root)
    dry = extmod(["--root", root, "import-dkms", "--dry-run"])
    assert dry.rc == 0, dry.err
    assert "extmod-pair/1.0: register" in dry.out
    assert (
        f"{kver} x86_64: installed (updates/dkms/hello.ko, updates/dkms/twofile.ko), "
        f"not rebuilt" in dry.out
    )
    assert f"{kver} x86_64: built, not installed" in dry.out  # acpi-call
    assert "vpoll/0.1: register" in dry.out
    plan = extmod(["--root", root, "--json", "import-dkms", "--dry-run"]).json()
    assert [p["name"] for p in plan["packages"]] == ["acpi-call", "extmod-pair", "vpoll"]
    assert snapshot(root) == before

    res = extmod(["--root", root, "--json", "import-dkms"])
    assert res.rc == 0, res.err
    assert "building" not in res.err  # nothing was compiled
    actions = {(o["ident"], o["action"]) for o in res.json()["outcomes"]}
    assert ("extmod-pair/1.0", "imported: installed") in actions
    assert ("acpi-call/1.2.2", "imported: built") in actions
    assert ("vpoll/0.1", "imported: added") in actions
    status = {r["name"]: r["state"] for r in extmod(["--root", root, "--json", "status"]).json()}
    assert status == {"extmod-pair": "installed", "acpi-call": "built", "vpoll": "added"}
    assert (root / "var/lib/extmod/keys/mok.key").read_bytes() == dkms_key
    # DKMS no longer sees them (its own hooks would build them too).
    assert (
        sorted(
            p.name
            for p in (root / "var/lib/dkms").iterdir()
            if not p.name.startswith(("mok.", "dkms_dbversion"))
        )
        == []
    )
    assert _dkms(trees, root, "status").stdout.strip() == ""
    assert (root / "var/lib/extmod/dkms-imported/extmod-pair/1.0/source").is_symlink()

    # The next autoinstall builds only what DKMS never built (vpoll); acpi-call is installed
    # from DKMS's build, extmod-pair is left as it is.
    auto = extmod(["--root", root, "--json", "autoinstall", "-k", kver])
    assert auto.rc == 0, auto.err
    built = [ln for ln in auto.err.splitlines() if ln.startswith("building ")]
    assert len(built) == 1 and built[0].startswith("building vpoll/0.1"), auto.err
    outcomes = {o["ident"]: o["action"] for o in auto.json()["outcomes"] if o["action"] != "built"}
    assert outcomes == {
        "extmod-pair/1.0": "up to date",
        "acpi-call/1.2.2": "installed",
        "vpoll/0.1": "installed",
    }
    for rel, data in by_dkms.items():
        assert (mods / rel).read_bytes() == data  # DKMS's files, untouched

    # extmod owns them now: uninstall takes DKMS's files out, and depmod forgets them.
    gone = extmod(["--root", root, "uninstall", "extmod-pair", "--all"])
    assert gone.rc == 0, gone.err
    assert not any((mods / rel).exists() for rel in by_dkms)
    assert "hello" not in (mods / "modules.dep").read_text()

    again = extmod(["--root", root, "import-dkms", "--dry-run"])
    assert again.rc == 0 and again.out.strip() == "DKMS manages no package here"


def test_a_package_whose_source_is_gone_is_left_to_dkms(
    tmp_path: Path, trees: dict[str, Any]
) -> None:
    """DKMS's record of a package whose /usr/src dir was deleted: reported (exit 3, one
    line naming it), not imported, and DKMS's record left where it is; the others go on,
    and a /usr/src/*/dkms.conf DKMS never registered is registered too."""
    root = tmp_path / "root"
    vpoll = Path(trees["dkms"]["packages"]["vpoll-dkms"]["src"])
    shutil.copytree(vpoll, root / "usr/src" / vpoll.name, symlinks=True)
    gone = root / "var/lib/dkms/ghost/2.0"
    gone.mkdir(parents=True)
    (gone / "source").symlink_to("/usr/src/ghost-2.0")
    shutil.copytree(EXAMPLES / "dkms-pair", root / "usr/src/extmod-pair-1.0", symlinks=True)
    (root / "var/lib/dkms/extmod-pair/1.0").mkdir(parents=True)
    (root / "var/lib/dkms/extmod-pair/1.0/source").symlink_to("/usr/src/extmod-pair-1.0")
    dry = extmod(["--root", root, "import-dkms", "--dry-run"])
    assert "vpoll/0.1: register" in dry.out and "(a source DKMS has not registered)" in dry.out
    res = extmod(["--root", root, "import-dkms"])
    assert res.rc == 3, res.err
    errors = [ln for ln in res.err.splitlines() if ln.startswith("extmod: error:")]
    assert len(errors) == 1 and "ghost/2.0 not imported: no source" in errors[0]
    assert (root / "var/lib/dkms/ghost/2.0/source").is_symlink()  # left to DKMS
    assert not (root / "var/lib/dkms/extmod-pair").exists()  # the other one was taken over
    status = extmod(["--root", root, "--json", "status"]).json()
    assert [(r["name"], r["state"]) for r in status] == [
        ("extmod-pair", "added"),
        ("vpoll", "added"),
    ]


def test_import_keeps_the_original_module_dkms_moved_aside(
    tmp_path: Path, trees: dict[str, Any]
) -> None:
    """Outside Debian and Ubuntu, DKMS moves a same-named module it finds in /extra or
    /updates into original_module/ and puts it back on uninstall; after the import, extmod
    does. (The staged os-release says Arch, for both tools.)"""
    kver = trees["gcc"]["kver"]
    root = _stage(tmp_path, trees, distro="arch")
    mods = root / "lib/modules" / kver
    (mods / "extra").mkdir(parents=True)
    (mods / "extra/hello.ko").write_bytes(b"the module that was here before\n")
    _dkms(trees, root, "add", "-m", "extmod-pair", "-v", "1.0")
    # --force: DKMS refuses to replace a module whose version it cannot tell apart.
    _dkms(trees, root, "install", "--force", "-m", "extmod-pair", "-v", "1.0", "-k", kver)
    assert not (mods / "extra/hello.ko").exists()  # DKMS moved it aside
    assert (root / f"var/lib/dkms/extmod-pair/original_module/{kver}/x86_64/hello.ko").is_file()

    res = extmod(["--root", root, "import-dkms"])
    assert res.rc == 0, res.err
    status = extmod(["--root", root, "status"])
    assert "(original module saved)" in status.out, status.out
    gone = extmod(["--root", root, "uninstall", "extmod-pair", "--all"])
    assert gone.rc == 0, gone.err
    assert (mods / "extra/hello.ko").read_bytes() == b"the module that was here before\n"
    assert not (mods / "updates/dkms/hello.ko").exists()


def test_imported_exports_serve_a_build_depends_user(tmp_path: Path, trees: dict[str, Any]) -> None:
    """A module DKMS built exports a symbol; after the import, a package extmod builds with
    BUILD_DEPENDS on it passes the load check (the exports were read from DKMS's .ko)."""
    from conftest import HEADER, package

    kver = trees["gcc"]["kver"]
    root = _stage(tmp_path, trees)
    provide = HEADER + (
        "int extmod_imp_dep(void) { return 42; }\nEXPORT_SYMBOL_GPL(extmod_imp_dep);\n"
    )
    package(root / "usr/src/impprovider-1.0", "impprovider", {"p.c": provide}, "obj-m := p.o\n")
    _dkms(trees, root, "add", "-m", "impprovider", "-v", "1.0")
    _dkms(trees, root, "install", "-m", "impprovider", "-v", "1.0", "-k", kver)
    assert extmod(["--root", root, "import-dkms"]).rc == 0
    built = root / f"var/lib/extmod/packages/impprovider/1.0/built/{kver}/x86_64/build.json"
    assert json.loads(built.read_text())["exports"] == ["extmod_imp_dep"]

    use = HEADER + (
        "int extmod_imp_dep(void);\n"
        "static int __init u_init(void) { return extmod_imp_dep() - 42; }\n"
        "module_init(u_init);\n"
    )
    user = package(
        tmp_path / "impuser-1.0",
        "impuser",
        {"u.c": use},
        "obj-m := u.o\n",
        make="make -C ${kernel_source_dir} "
        "M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build KBUILD_MODPOST_WARN=1",
        extra='BUILD_DEPENDS="impprovider"\n',
    )
    res = extmod(["--root", root, "install", user, "-k", kver])
    # The symbol is known (without the recorded exports: "unknown symbol extmod_imp_dep").
    # What is left is the CRC modpost could not record without the provider's
    # Module.symvers (DKMS cleaned its build dir): 6.1 refuses such a module at load.
    assert res.rc == 9, res.err
    assert "u.ko: no symbol version for extmod_imp_dep" in res.err
    assert "unknown symbol" not in res.err
