"""Issue 5, least privilege, on real trees: as root with --build-user, every compile, the
dkms.conf evaluation and the package's own scripts run as the unprivileged user and only the
install runs as root; as a non-root user, a whole install into a --root staging tree works
against a kernel tree it cannot write (the packaging case)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, NOBODY, extmod, make_root, snapshot

pytestmark = pytest.mark.slow

CONF = """\
PACKAGE_NAME="whoami"
PACKAGE_VERSION="1.0"
BUILT_MODULE_NAME[0]="hello"
DEST_MODULE_LOCATION[0]="/extra"
# Evaluated by bash: the uid it runs as ends up in a directive.
BUILD_DEPENDS="evaluated-as-$(id -u)"
PRE_BUILD="uid.sh pre-build"
POST_BUILD="uid.sh post-build"
POST_INSTALL="uid.sh post-install"
# A backslash defers $(id -u) past DKMS's two readings (safe_source) to the MAKE's eval.
""" + (
    "MAKE[0]='echo make-uid=\\$(id -u); make -C $kernel_source_dir "
    "M=$dkms_tree/$module/$module_version/build'\n"
)


def test_build_user_builds_and_root_installs(trees: dict[str, Any], user_dir: Path) -> None:
    kver = trees["gcc"]["kver"]
    root = make_root(user_dir / "root", kver, trees["gcc"]["build"])
    src = user_dir / "whoami-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(CONF)
    (src / "uid.sh").write_text('#!/bin/sh\necho "$1-uid=$(id -u)"\n')
    (src / "uid.sh").chmod(0o755)
    r = extmod(["--root", root, "install", src, "-k", kver, "--build-user", "nobody"])
    assert r.rc == 0, r.err

    state = root / "var/lib/extmod"
    log = (state / "packages/whoami/1.0/built" / kver / "x86_64/make.log").read_text()
    assert f"pre-build-uid={NOBODY}" in log and f"post-build-uid={NOBODY}" in log
    assert f"make-uid={NOBODY}" in log
    memo = json.loads((state / "build/whoami/1.0" / kver / ".extmod/dkms-conf.json").read_text())
    assert memo["directives"]["BUILD_DEPENDS"]["0"] == f"evaluated-as-{NOBODY}"
    # The objects were written by the build user; the install, its hook and the signing
    # key are root's.
    tree = state / "build/whoami/1.0" / kver / "dkms/whoami/1.0/build"
    assert (tree / "hello.o").stat().st_uid == NOBODY
    assert "post-install-uid=0" in (state / "packages/whoami/1.0/hooks.log").read_text()
    installed = root / "lib/modules" / kver / "updates/dkms/hello.ko"
    assert installed.stat().st_uid == 0
    key = state / "keys/mok.key"
    assert key.stat().st_uid == 0 and key.stat().st_mode & 0o777 == 0o600
    assert key.parent.stat().st_mode & 0o777 == 0o700
    # Root never writes where the build user has been: the next build starts from a tree
    # root made (a link planted there by the user does not redirect it).
    (tree / "planted").symlink_to("/etc")
    r = extmod(
        ["--root", root, "build", "whoami/1.0", "-k", kver, "--build-user", "nobody", "--force"]
    )
    assert r.rc == 0, r.err
    assert not (tree / "planted").is_symlink()


def test_build_user_must_be_unprivileged_and_exist(trees: dict[str, Any], tmp_path: Path) -> None:
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    for user, message in (
        ("root", "--build-user: expected the name of an unprivileged user, got 'root'"),
        ("no-such-user", "build.user: no user 'no-such-user' on this system"),
    ):
        r = extmod(
            ["--root", root, "install", EXAMPLES / "dkms-pair", "-k", kver, "--build-user", user]
        )
        assert r.rc == 3, r.err
        assert message in r.err.strip(), r.err


def test_non_root_stages_a_whole_install(trees: dict[str, Any], user_dir: Path) -> None:
    """The packaging case: makepkg, OBS, rpmbuild run as a user, into a staging root."""
    kver = trees["gcc"]["kver"]
    tree = Path(trees["gcc"]["build"])
    before = snapshot(tree)
    root = make_root(user_dir / "root", kver, str(tree))
    src = user_dir / "src"
    shutil.copytree(EXAMPLES / "dkms-pair", src, symlinks=False)
    for d in (user_dir / "root", src):
        for dirpath, dirnames, filenames in os.walk(d):
            for n in (*dirnames, *filenames):
                os.chown(os.path.join(dirpath, n), NOBODY, NOBODY, follow_symlinks=False)
        os.chown(d, NOBODY, NOBODY)
    env = {"HOME": str(user_dir / "home")}
    r = extmod(["--root", root, "install", src, "-k", kver], env=env, user=NOBODY)
    assert r.rc == 0, r.err
    kdir = root / "lib/modules" / kver
    assert sorted(str(p.relative_to(kdir)) for p in kdir.rglob("*.ko")) == [
        "updates/dkms/hello.ko",
        "updates/dkms/twofile.ko",
    ]
    assert "updates/dkms/hello.ko:" in (kdir / "modules.dep").read_text()
    r = extmod(["--root", root, "status"], env=env, user=NOBODY)
    assert r.out.strip() == f"extmod-pair/1.0, {kver}, x86_64: installed"
    assert snapshot(tree) == before, "the kernel tree was written"
    # And as that user without --root: refused, in one line, before anything is written.
    r = extmod(["install", src, "-k", kver], env=env, user=NOBODY)
    assert r.rc == 7 and "run it as root, or give --root DIR" in r.err
