"""The kernel hooks of `extmod install-hooks`, each run the way its package manager runs it,
in a staged root where Debian's real linux-headers packages are unpacked (``dpkg-deb -x``).

- Debian: the real maintainer scripts of linux-image-KVER (postinst, prerm) and
  linux-headers-KVER (postinst), run in a private mount namespace whose /etc/kernel is the
  staged one, with DPKG_ROOT set as ``dpkg --root`` sets it. Only the image scripts' steps
  that act on the machine itself (depmod of the real /lib/modules, linux-update-symlinks,
  linux-check-removal) are replaced by recorders on PATH; run-parts and the hooks are real.
- systemd: the real ``kernel-install add|remove`` (systemd 252) with only extmod's plugin
  (KERNEL_INSTALL_PLUGINS) and a private /boot; the unit checked by ``systemd-analyze
  verify`` and its ExecStart run as systemd would (``%v`` expanded).
- pacman: no pacman on Debian, so alpm's part is done here: Target globs matched with
  fnmatch (as alpm does) against the package's file list, the matches on stdin of Exec.

Debian's headers Makefile includes the machine's /usr/src/linux-headers-KVER-common by
absolute path; the same package is installed on this machine, so that resolves to the same
content.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, REPO, boot, check_console, extmod, unpack_headers

pytestmark = pytest.mark.slow


def _wrapper(where: Path) -> Path:
    """The extmod the hooks run: this checkout, with a clean PATH (recorders stay out)."""
    exe = where / "bin" / "extmod"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(
        f"#!/bin/sh\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin "
        f'PYTHONPATH={REPO / "src"}\nexec {sys.executable} -m extmod "$@"\n'
    )
    exe.chmod(0o755)
    return exe


PAIR_KOS = ["updates/dkms/hello.ko", "updates/dkms/twofile.ko"]  # dkms-pair, installed


def _staged(tmp: Path, trees: dict[str, Any], kind: str, pair: bool = True) -> tuple[Path, Path]:
    """A root with the headers packages unpacked, extmod-pair added (if ``pair``) and the
    hooks of ``kind`` installed to run this checkout; (root, the extmod they run)."""
    root, exe = unpack_headers(tmp / "root", trees), _wrapper(tmp)
    if pair:
        res = extmod(["--root", root, "add", EXAMPLES / "dkms-pair"])
        assert res.rc == 0, res.err
    res = extmod(["--root", root, "install-hooks", "--for", kind, "--exec", exe])
    assert res.rc == 0, res.err
    return root, exe


def _status(root: Path) -> list[dict[str, Any]]:
    res = extmod(["--root", root, "--json", "status"])
    assert res.rc == 0, res.err
    rows: list[dict[str, Any]] = res.json()
    return rows


def _installed_kos(root: Path, kver: str) -> list[str]:
    mods = root / "lib/modules" / kver
    return sorted(str(p.relative_to(mods)) for p in mods.rglob("*.ko*"))


def _recorders(where: Path, names: list[str]) -> Path:
    """Stand-ins on PATH for the image scripts' steps on the machine itself; each logs."""
    d = where / "recorders"
    d.mkdir()
    for name in names:
        (d / name).write_text(f'#!/bin/sh\necho {name} "$@" >> {where / "recorded"}\n')
        (d / name).chmod(0o755)
    return d


def _as_dpkg(
    root: Path, script: Path, arg: str, path_prefix: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a maintainer script as dpkg does (`SCRIPT configure|remove`, DPKG_ROOT set),
    with the staged /etc/kernel over the machine's, in a private mount namespace."""
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    if path_prefix is not None:
        path = f"{path_prefix}:{path}"
    inner = 'mount --bind "$1/etc/kernel" /etc/kernel && shift && exec "$@"'
    env = {
        "PATH": path,
        "LANG": "C.UTF-8",
        "DPKG_ROOT": str(root),
        "DPKG_MAINTSCRIPT_NAME": script.name,
        "DPKG_MAINTSCRIPT_PACKAGE": "linux-test",
    }
    (root / "etc/kernel").mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            inner,
            "sh",
            str(root),
            str(script),
            arg,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_install_hooks_writes_each_kind_once(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    bad = extmod(["--root", root, "install-hooks"])
    assert bad.rc == 3 and "--for KIND" in bad.err
    kinds = ["debian", "kernel-install", "pacman", "systemd"]
    args: list[str | Path] = [
        "--root",
        root,
        "--json",
        "install-hooks",
        "--exec",
        "/usr/bin/extmod",
    ]
    args += [a for k in kinds for a in ("--for", k)]
    first = extmod(args)
    assert first.rc == 0, first.err
    files = first.json()["files"]
    assert len(files) == 12 and all(f["changed"] for f in files)  # debian: 4 hooks + the apt guard
    again = extmod(args)
    assert not any(f["changed"] for f in again.json()["files"])  # idempotent
    post = root / "etc/kernel/postinst.d/extmod"
    assert post.stat().st_mode & 0o777 == 0o755
    assert "EXTMOD='/usr/bin/extmod'" in post.read_text()
    assert (
        os.readlink(root / "etc/systemd/system/multi-user.target.wants/extmod-autoinstall.service")
        == "/usr/lib/systemd/system/extmod-autoinstall.service"
    )
    for script in [
        post,
        root / "etc/kernel/preinst.d/extmod",
        root / "etc/kernel/prerm.d/extmod",
        root / "usr/lib/kernel/install.d/40-extmod.install",
    ]:
        assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    assert (
        subprocess.run(
            ["bash", "-n", str(root / "usr/share/libalpm/scripts/extmod-alpm")]
        ).returncode
        == 0
    )
    # A hook of someone else's is left alone by --remove; extmod's go.
    other = root / "etc/kernel/postinst.d/zz-other"
    other.write_text("#!/bin/sh\n")
    gone = extmod(
        [
            "--root",
            root,
            "--json",
            "install-hooks",
            "--remove",
            *[a for k in kinds for a in ("--for", k)],
        ]
    )
    assert gone.rc == 0 and len(gone.json()["removed"]) == 12
    assert other.exists() and not post.exists()
    # As a user without --root: refused before anything is written.
    user = extmod(["install-hooks", "--for", "debian"], user=65534)
    assert user.rc == 7 and "install-hooks changes /etc" in user.err


def test_debian_hooks_from_the_real_maintainer_scripts(
    tmp_path: Path, trees: dict[str, Any]
) -> None:
    gcc = trees["gcc"]
    kver = gcc["kver"]
    control = Path(gcc["image_control"])
    root, _ = _staged(tmp_path, trees, "debian")
    build_link = root / "lib/modules" / kver / "build"
    assert build_link.is_symlink()
    hidden = build_link.with_name("build.not-yet")
    build_link.rename(hidden)  # the image arrives first, its headers later (as apt may do)
    recorders = _recorders(tmp_path, ["depmod", "linux-update-symlinks", "linux-check-removal"])

    # 1. linux-image postinst without headers: the kernel package still configures.
    ran = _as_dpkg(root, control / "postinst", "configure", recorders)
    assert ran.returncode == 0, ran.stderr
    assert f"{kver}: no headers yet" in ran.stderr
    assert _installed_kos(root, kver) == []
    assert (
        f"linux-update-symlinks install {kver}" in (tmp_path / "recorded").read_text()
        or f"linux-update-symlinks upgrade {kver}" in (tmp_path / "recorded").read_text()
    )

    # 2. linux-headers postinst (the real perl script): the hook builds and installs.
    hidden.rename(build_link)
    headers_postinst = _headers_postinst(tmp_path, trees)
    ran = _as_dpkg(root, headers_postinst, "configure")
    assert ran.returncode == 0, ran.stderr
    assert _installed_kos(root, kver) == PAIR_KOS, ran.stderr
    assert "hello" in (root / "lib/modules" / kver / "modules.dep").read_text()
    assert [r["state"] for r in _status(root)] == ["installed"]
    # What the hook installed loads into that kernel (Debian's own vmlinuz, in qemu).
    mods = sorted((root / "lib/modules" / kver / "updates/dkms").glob("*.ko"))
    console = boot(Path(gcc["vmlinuz"]), mods, trees["busybox"], tmp_path / "qemu")
    check_console(
        console,
        kver,
        ["hello", "twofile"],
        ["extmod-hello: loaded", "extmod-twofile: loaded, answer 42"],
    )

    # 3. The image postinst again (reconfigure): nothing to build.
    ran = _as_dpkg(root, control / "postinst", "configure", recorders)
    assert ran.returncode == 0, ran.stderr
    assert "building" not in ran.stderr and "installed /" not in ran.stderr, ran.stderr
    assert [r["state"] for r in _status(root)] == ["installed"]

    # 4. The image prerm: modules out, builds forgotten; the package stays registered.
    ran = _as_dpkg(root, control / "prerm", "remove", recorders)
    assert ran.returncode == 0, ran.stderr
    assert _installed_kos(root, kver) == []
    assert [r["state"] for r in _status(root)] == ["added"]
    # Every write stayed in the staged root: the machine's /lib/modules/KVER is untouched.
    assert not list(Path("/lib/modules", kver).rglob("*extmod*"))


def _headers_postinst(tmp: Path, trees: dict[str, Any]) -> Path:
    deb = next(Path(trees["gcc"]["header_debs"]).glob(f"linux-headers-{trees['gcc']['kver']}_*"))
    out = tmp / "headers-control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(out)], check=True)
    return out / "postinst"


def test_kernel_install_plugin(tmp_path: Path, trees: dict[str, Any]) -> None:
    kver = trees["gcc"]["kver"]
    root, _ = _staged(tmp_path, trees, "kernel-install")
    plugin = root / "usr/lib/kernel/install.d/40-extmod.install"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "EXTMOD_ROOT": str(root),
        "KERNEL_INSTALL_PLUGINS": str(plugin),
    }
    boot = tmp_path / "boot"
    boot.mkdir()

    def kernel_install(*args: str) -> subprocess.CompletedProcess[str]:
        script = 'mount --bind "$1" /boot && shift && exec kernel-install "$@"'
        return subprocess.run(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                str(boot),
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    # A package that does not compile: reported, and the kernel's install still succeeds.
    broken = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "dkms-pair", broken, symlinks=True)
    conf = broken / "dkms.conf"
    conf.write_text(conf.read_text().replace('"extmod-pair"', '"broken-pair"'))
    (broken / "hello/hello.c").write_text("int f(void) { return undeclared_thing; }\n")
    assert extmod(["--root", root, "add", broken]).rc == 0

    ran = kernel_install("add", kver, trees["gcc"]["vmlinuz"])
    assert ran.returncode == 0, ran.stderr
    assert _installed_kos(root, kver) == PAIR_KOS, ran.stderr
    assert "undeclared_thing" in ran.stderr  # the first compiler error, file:line
    assert f"extmod: kernel-postinst {kver} failed (exit 6)" in ran.stderr
    ran = kernel_install("remove", kver)
    assert ran.returncode == 0, ran.stderr
    assert _installed_kos(root, kver) == []
    assert [r["state"] for r in _status(root)] == ["added", "added"]


def test_systemd_unit_for_boot(tmp_path: Path, trees: dict[str, Any]) -> None:
    kver = trees["gcc"]["kver"]
    root, exe = _staged(tmp_path, trees, "systemd")
    unit = root / "usr/lib/systemd/system/extmod-autoinstall.service"
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    parsed = configparser.ConfigParser(interpolation=None, strict=False)
    parsed.read_string(unit.read_text())
    condition = parsed["Unit"]["ConditionPathExists"].replace("%v", kver)
    assert (root / condition.lstrip("/")).exists()
    argv = parsed["Service"]["ExecStart"].replace("%v", kver).split()
    assert argv[0] == str(exe)
    ran = subprocess.run(
        argv,
        env={"PATH": "/usr/bin:/bin", "EXTMOD_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr
    assert _installed_kos(root, kver) == PAIR_KOS


def _alpm_run(
    root: Path, hook: Path, owned: list[str], exe_env: dict[str, str]
) -> subprocess.CompletedProcess[str] | None:
    """What alpm does for a Path hook with NeedsTargets: the package's files matching a
    Target (fnmatch), sorted, one per line on Exec's stdin; None when none match."""
    parsed = configparser.ConfigParser(interpolation=None, strict=False, allow_no_value=True)
    parsed.optionxform = str  # type: ignore[assignment,method-assign]
    text = hook.read_text()
    targets = [ln.split("=", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Target")]
    parsed.read_string(
        "\n".join(ln for ln in text.splitlines() if not ln.startswith(("Target", "Operation")))
    )
    assert parsed["Trigger"]["Type"].strip() == "Path"
    assert "NeedsTargets" in parsed["Action"]
    matched = sorted(p for p in owned if any(fnmatch.fnmatchcase(p, t) for t in targets))
    if not matched:
        return None
    exec_argv = parsed["Action"]["Exec"].split()
    exec_argv[0] = str(root / exec_argv[0].lstrip("/"))  # alpm chroots into the root
    return subprocess.run(
        exec_argv,
        input="".join(m + "\n" for m in matched),
        env=exe_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_pacman_hooks(tmp_path: Path, trees: dict[str, Any]) -> None:
    kver = trees["gcc"]["kver"]
    root, _ = _staged(tmp_path, trees, "pacman", pair=False)
    hooks = root / "usr/share/libalpm/hooks"
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "EXTMOD_ROOT": str(root)}
    # Arch's linux-headers owns its tree in usr/lib/modules/KVER/build/; the Debian package
    # here owns the same files under usr/src/linux-headers-KVER/.
    debian_tree = f"usr/src/linux-headers-{kver}/"
    headers_files = [
        f"usr/lib/modules/{kver}/build/" + str(p.relative_to(root / debian_tree))
        for p in (root / debian_tree).rglob("*")
    ]
    # A DKMS package as pacman unpacks it: its source in usr/src/NAME-VERSION.
    shutil.copytree(EXAMPLES / "dkms-pair", root / "usr/src/extmod-pair-1.0", symlinks=True)
    pkg_files = [str(p.relative_to(root)) for p in (root / "usr/src/extmod-pair-1.0").rglob("*")]

    ran = _alpm_run(root, hooks / "70-extmod-install.hook", pkg_files, env)
    assert ran is not None and ran.returncode == 0, ran and ran.stderr
    assert _installed_kos(root, kver) == PAIR_KOS, ran.stderr
    # The headers upgraded: the remove hook (PreTransaction) then the install hook.
    ran = _alpm_run(root, hooks / "70-extmod-remove.hook", headers_files, env)
    assert ran is not None
    assert ran.returncode == 0, ran.stderr
    assert _installed_kos(root, kver) == []
    ran = _alpm_run(root, hooks / "70-extmod-install.hook", headers_files, env)
    assert ran is not None
    assert ran.returncode == 0, ran.stderr
    assert len(_installed_kos(root, kver)) == 2, ran.stderr
    # A file no Target names triggers nothing.
    assert _alpm_run(root, hooks / "70-extmod-install.hook", ["usr/share/doc/x"], env) is None
    # The DKMS package removed: its modules out and its registration gone.
    ran = _alpm_run(root, hooks / "70-extmod-remove.hook", pkg_files, env)
    assert ran is not None
    assert ran.returncode == 0, ran.stderr
    assert _installed_kos(root, kver) == []
    assert _status(root) == []
