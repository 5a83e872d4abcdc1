"""framework.conf's settings of DKMS 3.2 to 3.4 through extmod's ``dkms`` (issue 21), on a
staged root with Debian's 6.1 headers (a CONFIG_MODULE_SIG kernel) and gcc:

- ``post_transaction`` (3.2.0): runs after an install or uninstall that succeeded and an
  autoinstall that installed something, its output in <dkms tree>/post_transaction.log;
  not after a build that failed, nor an autoinstall with nothing to do;
- ``build_environment`` (3.3.0): the variables the file exports reach every make (a module
  that does not compile without them compiles), and they are inputs of the build;
- ``try_sign_modules`` (3.4.0): ``false`` leaves the modules unsigned, the default signs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import dkms, make_root, postinst

pytestmark = pytest.mark.slow

# Compiles only when the make sees ENVMARK=42 in its environment.
_ENVMARK = (
    "#if ENVMARK != 42\n#error ENVMARK is not 42: the build environment did not reach make\n"
    "#endif\n"
)
SIGNATURE = b"~Module signature appended~\n"


@pytest.fixture
def root(trees: dict[str, Any], tmp_path: Path) -> Path:
    r = make_root(tmp_path / "root", trees["gcc"]["kver"], trees["gcc"]["build"])
    _package(r, "envmark", code=_ENVMARK, kbuild="ccflags-y += -DENVMARK=$(ENVMARK)\n")
    (r / "etc/dkms/framework.conf.d").mkdir(parents=True)
    return r


def framework(root: Path, text: str) -> None:
    (root / "etc/dkms/framework.conf.d/test.conf").write_text(text)


def test_framework_settings_of_dkms_3_2_to_3_4(trees: dict[str, Any], root: Path) -> None:
    kver = trees["gcc"]["kver"]
    marker = root / "post-transaction-ran"
    env_file = root / "etc/dkms/build.env"
    env_file.write_text("export ENVMARK=41\nNOT_EXPORTED=1\n")
    framework(
        root,
        f'post_transaction="echo post >> {marker}; echo logged"\nbuild_environment="{env_file}"\n',
    )
    assert dkms(root, "add", "-m", "envmark", "-v", "1.0").returncode == 0
    # the file's ENVMARK reached make: 41 does not compile, and no post_transaction runs
    res = dkms(root, "install", "-m", "envmark", "-v", "1.0", "-k", kver)
    assert res.returncode == 10, res.stdout + res.stderr
    assert "ENVMARK is not 42" in "".join(
        p.read_text(errors="replace")
        for p in (root / "var/lib/extmod/build/envmark/1.0" / kver).rglob("*.log")
    )
    assert not marker.exists()
    # the file changed: an input of the build, so it builds again, and compiles
    env_file.write_text("export ENVMARK=42\n")
    res = dkms(root, "install", "-m", "envmark", "-v", "1.0", "-k", kver)
    assert res.returncode == 0, res.stdout + res.stderr
    assert marker.read_text() == "post\n"
    log = (root / "var/lib/extmod/post_transaction.log").read_text()  # as DKMS 3.2 writes it
    assert f"\n# command: echo post >> {marker}; echo logged\nlogged\n\n# exit code: 0\n" in log
    assert "Executing post-transaction command... done." in res.stdout, res.stdout
    # after an uninstall, and an autoinstall that installed something; not after one that
    # had nothing to do (3.2.2: ``${#installed_modules[@]} -gt 0``)
    assert dkms(root, "uninstall", "-m", "envmark", "-v", "1.0", "-k", kver).returncode == 0
    assert marker.read_text() == "post\n" * 2
    res = dkms(root, "autoinstall", "-k", kver)
    assert res.returncode == 0, res.stdout + res.stderr
    assert marker.read_text() == "post\n" * 3, res.stdout + res.stderr
    assert dkms(root, "autoinstall", "-k", kver).returncode == 0
    assert marker.read_text() == "post\n" * 3
    ko = root / "lib/modules" / kver / "updates/dkms/envmark.ko"
    assert ko.read_bytes().endswith(SIGNATURE)  # Debian's kernel signs: so does extmod
    # try_sign_modules=false: the next build is not signed (the signer is an input too)
    framework(
        root,
        f'build_environment="{env_file}"\ntry_sign_modules="false"\n',
    )
    assert dkms(root, "unbuild", "-m", "envmark", "-v", "1.0", "-k", kver).returncode == 0
    res = dkms(root, "install", "-m", "envmark", "-v", "1.0", "-k", kver)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not ko.read_bytes().endswith(SIGNATURE)
    assert marker.read_text() == "post\n" * 3  # no post_transaction set any more: not run


def _package(root: Path, name: str, extra: str = "", code: str = "", kbuild: str = "") -> Path:
    """/usr/src/NAME-1.0: one module NAME, AUTOINSTALL, ``extra`` dkms.conf lines, ``code``
    after the module header, ``kbuild`` lines after obj-m."""
    src = root / "usr/src" / f"{name}-1.0"
    src.mkdir(parents=True)
    (src / "dkms.conf").write_text(
        f'PACKAGE_NAME="{name}"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="{name}"\n'
        f'DEST_MODULE_LOCATION[0]="/extra"\nAUTOINSTALL="yes"\n{extra}'
    )
    (src / "Kbuild").write_text(f"obj-m := {name}.o\n{kbuild}")
    (src / f"{name}.c").write_text(f'#include <linux/module.h>\nMODULE_LICENSE("GPL");\n{code}')
    return src


def test_build_depends_deferred_then_built_and_rebuilt_with_its_dependency(
    trees: dict[str, Any], root: Path
) -> None:
    """DKMS 3.4.1's deferral (a BUILD_DEPENDS not registered yet: autoinstall defers, exit
    0), then the dependency's own postinst installs the dependant after it; 3.2.0's rebuild
    of dependants: a dependency built anew makes the dependant build again."""
    kver = trees["gcc"]["kver"]
    _package(root, "user", 'BUILD_DEPENDS[0]="dep"\n')
    dep = _package(root, "dep", code="int dep_value = 1;\n")
    assert dkms(root, "add", "-m", "user", "-v", "1.0").returncode == 0
    res = dkms(root, "autoinstall", "-k", kver)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "user/1.0, " + kver + ": deferred" in res.stdout, res.stdout
    assert dkms(root, "status").stdout.splitlines() == ["user/1.0: added"]
    # apt configures the dependency: both get installed
    res = postinst(root, "dep", "1.0", "/usr/share/dep-dkms", "", "")
    assert res.returncode == 0, res.stdout + res.stderr
    assert dkms(root, "status").stdout.splitlines() == [
        f"dep/1.0, {kver}, x86_64: installed",
        f"user/1.0, {kver}, x86_64: installed",
    ]
    res = dkms(root, "autoinstall", "-k", kver)
    assert "Building module(s)" not in res.stdout, res.stdout  # all current: nothing builds
    (dep / "dep.c").write_text(
        '#include <linux/module.h>\nMODULE_LICENSE("GPL");\nint dep_value = 2;\n'
    )
    res = dkms(root, "autoinstall", "-k", kver)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("dep", "user"):  # user: its dependency changed
        assert f"Autoinstall of module {name}/1.0 for kernel {kver} (x86_64)\nBuilding" in (
            res.stdout
        ), res.stdout
