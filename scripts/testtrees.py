#!/usr/bin/env python3
"""Prepare the real kernel trees the test suite builds against, cached outside the repo.

Each tree lives under $EXTMOD_TEST_CACHE (default /var/cache/extmod-tests) in a directory
whose name carries the Debian package version it was made from and a hash of the recipe, so
a warm run finds it and a new kernel or a changed recipe makes a new one. Every tree is built
in a ``.partial`` directory and renamed into place, so an interrupted run leaves no half tree.

Trees (see README "Test kernel trees"):
  gcc        Debian's linux-headers-amd64 (installed by apt) and the matching vmlinuz,
             unpacked from linux-image-<kver> with dpkg-deb (no maintainer script runs).
  thinlto    linux-source-6.1 built with clang-16/lld-16, ThinLTO, tinyconfig plus what it
             takes to boot in qemu and load modules; gives Module.symvers and a bzImage.
  gen513     a hard-link copy of ``thinlto`` whose top Makefile has the ThinLTO cache line
             of Linux 5.13-6.9 put back (see GEN513_LINE).
  defconfig  linux-source-6.1 ``defconfig`` + ThinLTO (clang-16), ``modules_prepare``d: a
             realistic config for real DKMS packages (no Module.symvers: modpost only warns).
  dkms       Debian's dkms and the -dkms packages of DKMS_PACKAGES, fetched with
             ``apt-get download`` and unpacked with ``dpkg-deb -x`` (no maintainer script runs).

Writes a manifest (trees.json) in the cache dir; the tests read it. Stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE = Path(os.environ.get("EXTMOD_TEST_CACHE", "/var/cache/extmod-tests"))
LLVM_SUFFIX = "-16"
JOBS = str(os.cpu_count() or 2)

# tinyconfig + what a qemu boot with a busybox initramfs and module loading needs.
TINY_ENABLE = [
    "64BIT", "MODULES", "MODULE_UNLOAD", "PRINTK", "BLK_DEV_INITRD", "TTY",
    "SERIAL_8250", "SERIAL_8250_CONSOLE", "BINFMT_ELF", "BINFMT_SCRIPT", "DEVTMPFS",
    "PROC_FS", "SYSFS", "LTO_CLANG_THIN",
]
TINY_DISABLE = ["LTO_NONE"]

# Linux 5.13 through 6.9 (and 5.15.y/6.1.y until the June 2024 backports of upstream commit
# aba091547ef6 "kbuild: Remove support for Clang's ThinLTO caching") had, right after the
# ThinLTO CC_FLAGS_LTO line of the top Makefile:
#     KBUILD_LDFLAGS += --thinlto-cache-dir=$(extmod_prefix).thinlto-cache
# extmod_prefix is defined ~200 lines further down, and KBUILD_LDFLAGS is simply expanded, so
# for `make -C <kbuild> M=<dir>` it expands to nothing and the cache lands in the cwd of
# `make -C`: the kernel build dir. Linux 5.12 (commit dc5723b02e52) spelled it
# $(extmod-prefix), defined before use, so the cache went to the module dir.
GEN513_ANCHOR = "CC_FLAGS_LTO\t:= -flto=thin -fsplit-lto-unit\n"
GEN513_LINE = "KBUILD_LDFLAGS\t+= --thinlto-cache-dir=$(extmod_prefix).thinlto-cache\n"

RECIPE_VERSION = "3"

# The defconfig tree: x86_64 defconfig with ThinLTO instead of no LTO, and a local version so
# its release differs from the tiny tree's (and looks like a distro's, "6.1.192-lto").
DEFCONFIG_ENABLE = ["LTO_CLANG_THIN"]
DEFCONFIG_DISABLE = ["LTO_NONE"]
DEFCONFIG_LOCALVERSION = "-lto"

# Debian 12's DKMS packages the parity test registers with both tools (issue 3).
DKMS_PACKAGES = [
    "acpi-call-dkms", "v4l2loopback-dkms", "xtables-addons-dkms", "jool-dkms", "ddcci-dkms",
    "dm-writeboost-dkms", "evdi-dkms", "tp-smapi-dkms", "vpoll-dkms", "digimend-dkms",
    "lttng-modules-dkms", "iptables-netflow-dkms",
]

# The Kconfig option proposed upstream in 2021 (LTO_CLANG_THIN_CACHEDIR, never merged) as a
# kernel that carried it would record it; the "cachedir" tree has it, for the fourth source
# of extmod's cache-dir resolution order.
KERNEL_CACHEDIR = "/var/tmp/extmod-tests-kernel-cachedir"


def log(msg: str) -> None:
    print(f"testtrees: {msg}", flush=True)


def sh(argv: list[str], cwd: Path | None = None, quiet: bool = False) -> str:
    res = subprocess.run(argv, cwd=cwd, text=True, capture_output=quiet)
    if res.returncode != 0:
        if quiet:
            sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"testtrees: failed ({res.returncode}): {' '.join(argv)}")
    return res.stdout if quiet else ""


def pkg_version(name: str) -> str:
    return sh(["dpkg-query", "-W", "-f=${Version}", name], quiet=True).strip()


def recipe_hash(*parts: str) -> str:
    h = hashlib.sha256(RECIPE_VERSION.encode())
    for p in parts:
        h.update(p.encode() + b"\0")
    return h.hexdigest()[:10]


def gcc_tree() -> dict[str, str]:
    """Debian's gcc headers (from apt) plus the matching kernel image for qemu."""
    builds = sorted(Path("/lib/modules").glob("*/build"))
    if not builds:
        raise SystemExit("testtrees: no /lib/modules/*/build: apt-get install linux-headers-amd64")
    build = builds[-1].resolve()
    kver = builds[-1].parent.name
    image_dir = CACHE / "debian-image" / kver
    vmlinuz = image_dir / "vmlinuz"
    control = image_dir / "image-control"
    debs = image_dir / "debs"
    if not vmlinuz.exists() or not control.is_dir():
        log(f"unpacking Debian's vmlinuz and maintainer scripts for {kver}")
        tmp = Path(tempfile.mkdtemp(prefix="image.", dir=CACHE))
        deb = apt_download(f"linux-image-{kver}", tmp)
        sh(["dpkg-deb", "-x", str(deb), str(tmp / "x")])
        sh(["dpkg-deb", "-e", str(deb), str(tmp / "control")])
        image_dir.mkdir(parents=True, exist_ok=True)
        src = next((tmp / "x" / "boot").glob("vmlinuz-*"))
        part = vmlinuz.with_suffix(".partial")
        shutil.copyfile(src, part)
        part.rename(vmlinuz)
        shutil.rmtree(control, ignore_errors=True)
        (tmp / "control").rename(control)
        shutil.rmtree(tmp)
    if not (debs / "done").exists():
        # The headers packages themselves, for the hook tests to unpack into a staged root
        # and run the headers postinst as dpkg would.
        log(f"fetching the linux-headers packages of {kver}")
        part = debs.with_suffix(".partial")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        for pkg in headers_packages(kver):
            apt_download(pkg, part)
        (part / "done").write_text("")
        shutil.rmtree(debs, ignore_errors=True)
        part.rename(debs)
    return {"kver": kver, "build": str(build), "vmlinuz": str(vmlinuz),
            "image_control": str(control), "header_debs": str(debs)}


def apt_download(pkg: str, dest: Path) -> Path:
    """``apt-get download`` one package into ``dest``; returns the .deb."""
    if subprocess.run(["apt-get", "download", pkg], cwd=dest).returncode != 0:
        sh(["apt-get", "update", "-q"])  # a machine whose package lists were never fetched
        sh(["apt-get", "download", pkg], cwd=dest)
    return next(dest.glob(f"{pkg}_*.deb"))


def headers_packages(kver: str) -> list[str]:
    """linux-headers-KVER and the packages of its tree: -common and linux-kbuild-X.Y."""
    depends = sh(["dpkg-query", "-W", "-f=${Depends}", f"linux-headers-{kver}"], quiet=True)
    names = [d.split()[0] for d in depends.split(",")]
    return [f"linux-headers-{kver}",
            *(n for n in names if n.startswith(("linux-headers-", "linux-kbuild-")))]


def source_tree(final: Path, done: str, base: str, enable: list[str], disable: list[str],
                set_str: list[str], targets: list[str], what: str) -> None:
    """linux-source-6.1 in ``final``: ``base`` config, options enabled/disabled (and
    ``set_str`` NAME VALUE pairs), olddefconfig, then make ``targets`` with clang-16.
    Skipped when ``final/done`` exists; built in ``final.partial`` and renamed."""
    if (final / done).exists():
        return
    part = final.with_name(final.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    log(f"extracting linux-source-6.1 for the {what}")
    sh(["tar", "-xf", "/usr/src/linux-source-6.1.tar.xz", "-C", str(part),
        "--strip-components=1"])
    make = ["make", f"LLVM={LLVM_SUFFIX}", f"-j{JOBS}"]
    sh([*make, base], cwd=part, quiet=True)
    config = ["scripts/config"]
    for i in range(0, len(set_str), 2):
        config += ["--set-str", set_str[i], set_str[i + 1]]
    for opt in enable:
        config += ["-e", opt]
    for opt in disable:
        config += ["-d", opt]
    sh(config, cwd=part)
    sh([*make, "olddefconfig"], cwd=part, quiet=True)
    dotconfig = (part / ".config").read_text()
    for opt in enable:
        if f"CONFIG_{opt}=y" not in dotconfig:
            raise SystemExit(f"testtrees: CONFIG_{opt} did not stick in the {what}")
    log(f"make {' '.join(targets)} for the {what}")
    sh([*make, *targets], cwd=part, quiet=True)
    shutil.rmtree(final, ignore_errors=True)
    part.rename(final)


def thinlto_tree() -> dict[str, str]:
    version = pkg_version("linux-source-6.1")
    key = recipe_hash(version, LLVM_SUFFIX, *TINY_ENABLE, "-", *TINY_DISABLE)
    final = CACHE / "trees" / f"thinlto-tiny-{version}-{key}"
    # About 4 minutes on 2 cores.
    source_tree(final, "arch/x86/boot/bzImage", "tinyconfig", TINY_ENABLE, TINY_DISABLE, [],
                ["bzImage", "modules"], "tiny clang ThinLTO kernel")
    rel = (final / "include/config/kernel.release").read_text().strip()
    return {"kver": rel, "build": str(final), "bzimage": str(final / "arch/x86/boot/bzImage"),
            "version": version}


def defconfig_tree() -> dict[str, str]:
    version = pkg_version("linux-source-6.1")
    key = recipe_hash(version, LLVM_SUFFIX, "defconfig", *DEFCONFIG_ENABLE, "-",
                      *DEFCONFIG_DISABLE, DEFCONFIG_LOCALVERSION)
    final = CACHE / "trees" / f"thinlto-defconfig-{version}-{key}"
    source_tree(final, "include/generated/utsrelease.h", "defconfig", DEFCONFIG_ENABLE,
                DEFCONFIG_DISABLE, ["LOCALVERSION", DEFCONFIG_LOCALVERSION],
                ["modules_prepare"], "defconfig ThinLTO tree")
    rel = (final / "include/config/kernel.release").read_text().strip()
    return {"kver": rel, "build": str(final), "version": version}


def _candidates(names: list[str]) -> dict[str, str]:
    policy = sh(["apt-cache", "policy", *names], quiet=True)
    return dict(re.findall(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)", policy, re.M))


def dkms_packages() -> dict[str, object]:
    """Debian's dkms and the DKMS_PACKAGES, unpacked; keyed by the candidate versions."""
    names = ["dkms", *DKMS_PACKAGES]
    versions = _candidates(names)
    if any(versions.get(n, "(none)") == "(none)" for n in names):
        sh(["apt-get", "update", "-q"])  # package lists never fetched on this machine
        versions = _candidates(names)
    key = recipe_hash(*(f"{n}={versions.get(n)}" for n in names))
    final = CACHE / "dkms" / key
    if not (final / "done").exists():
        part = final.with_name(final.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        (part / "debs").mkdir(parents=True)
        log(f"apt-get download dkms and {len(DKMS_PACKAGES)} -dkms packages")
        sh(["apt-get", "download", "-q", *names], cwd=part / "debs", quiet=True)
        for deb in sorted((part / "debs").glob("*.deb")):
            sh(["dpkg-deb", "-x", str(deb), str(part / deb.name.split("_")[0])])
        (part / "done").write_text("\n".join(f"{n} {versions.get(n)}" for n in names) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        part.rename(final)
        final.parent.chmod(0o755)
    packages = {}
    for n in DKMS_PACKAGES:
        srcs = sorted((final / n / "usr/src").iterdir())
        if len(srcs) != 1:
            raise SystemExit(f"testtrees: {n}: expected one dir in usr/src, found {srcs}")
        packages[n] = {"version": versions[n], "src": str(srcs[0])}
    return {"dkms": str(final / "dkms/usr/sbin/dkms"), "dkms_version": versions["dkms"],
            "dkms_root": str(final / "dkms"), "packages": packages}


def variant_tree(base: Path, suffix: str, edits: dict[str, Callable[[str], str]]) -> Path:
    """A hard-link copy of ``base`` with some files rewritten (each link broken first)."""
    final = base.with_name(base.name + suffix)
    if not (final / "Makefile").exists():
        part = final.with_name(final.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        log(f"making the {suffix.lstrip('-')} variant of {base.name}")
        sh(["cp", "-al", str(base), str(part)])
        for name, edit in edits.items():
            f = part / name
            text = edit(f.read_text())
            f.unlink()  # break the hard link before writing
            f.write_text(text)
        part.rename(final)
    return final


def _restore_gen513_line(text: str) -> str:
    if GEN513_ANCHOR not in text:
        raise SystemExit("testtrees: ThinLTO anchor line not found in the top Makefile")
    return text.replace(GEN513_ANCHOR, GEN513_ANCHOR + GEN513_LINE, 1)


def _add_cachedir_option(text: str) -> str:
    return text + f'CONFIG_LTO_CLANG_THIN_CACHEDIR="{KERNEL_CACHEDIR}"\n'


def gen513_tree(thin: dict[str, str]) -> dict[str, str]:
    final = variant_tree(Path(thin["build"]), "-gen513", {"Makefile": _restore_gen513_line})
    return {"kver": thin["kver"], "build": str(final), "bzimage": thin["bzimage"]}


def cachedir_tree(gen513: dict[str, str]) -> dict[str, str]:
    final = variant_tree(Path(gen513["build"]), "-cachedir",
                         dict.fromkeys(("include/config/auto.conf", ".config"),
                                       _add_cachedir_option))
    return {"kver": gen513["kver"], "build": str(final), "cachedir": KERNEL_CACHEDIR}


def main() -> int:
    CACHE.mkdir(parents=True, exist_ok=True)
    gcc = gcc_tree()
    thin = thinlto_tree()
    gen513 = gen513_tree(thin)
    cachedir = cachedir_tree(gen513)
    defconfig = defconfig_tree()
    dkms = dkms_packages()
    busybox = shutil.which("busybox") or "/bin/busybox"
    manifest = {"gcc": gcc, "thinlto": thin, "gen513": gen513, "cachedir": cachedir,
                "defconfig": defconfig, "dkms": dkms, "busybox": busybox}
    tmp = CACHE / "trees.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.rename(CACHE / "trees.json")
    # World-readable, so tests can build as an unprivileged user.
    for d in (CACHE, CACHE / "trees", CACHE / "debian-image"):
        d.chmod(0o755)
    log(f"ready: {CACHE / 'trees.json'}")
    return 0


if __name__ == "__main__":
    if re.search(r"\s", str(CACHE)):
        raise SystemExit("testtrees: EXTMOD_TEST_CACHE must not contain white space")
    sys.exit(main())
