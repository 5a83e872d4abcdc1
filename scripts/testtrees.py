#!/usr/bin/env python3
"""Prepare the real kernel trees the test suite builds against, cached outside the repo.

Each tree lives under $EXTMOD_TEST_CACHE (default /var/cache/extmod-tests) in a directory
whose name carries the Debian package version it was made from and a hash of the recipe, so
a warm run finds it and a new kernel or a changed recipe makes a new one. Every tree is built
in a ``.partial`` directory and renamed into place, so an interrupted run leaves no half tree.

Trees (see docs/dev/test-trees.md):
  gcc        Debian's linux-headers-amd64 (installed by apt) and the matching vmlinuz,
             unpacked from linux-image-<kver> with dpkg-deb (no maintainer script runs).
  thinlto    linux-source-6.1 built with clang-16/lld-16, ThinLTO, tinyconfig plus what it
             takes to boot in qemu and load modules; gives Module.symvers and a bzImage.
  gen513     a hard-link copy of ``thinlto`` whose top Makefile has the ThinLTO cache line
             of Linux 5.13-6.9 put back (see GEN513_LINE).
  defconfig  linux-source-6.1 ``defconfig`` + ThinLTO (clang-16), ``modules_prepare``d: a
             realistic config for real DKMS packages (no Module.symvers: modpost only warns).
  debian612  Debian's newest 6.12 headers from bookworm-backports, unpacked into the cache
             (see debian612_tree), and the vmlinuz of their kernel image.
  thinlto612 the thinlto recipe on linux-source-6.12.
  dkms       Debian's dkms and the -dkms packages of DKMS_PACKAGES, fetched with
             ``apt-get download`` and unpacked with ``dpkg-deb -x`` (no maintainer script runs).
  zfs        zfs-dkms of bookworm and of bookworm-backports, unpacked.
  nvidia     bookworm's nvidia-kernel-dkms (non-free), unpacked: the benchmark's case h.
  chroot     a minimal Debian 12 system (mmdebstrap) as a tarball keyed by day, for the
             tests that run apt in a chroot; and a shared dir for the .debs they fetch.

contrib, non-free and backports come through aptarchive.py (a private apt configuration
from this machine's own sources).

Writes a manifest (trees.json) in the cache dir; the tests read it. Stdlib only.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aptarchive  # beside this script
import hosts  # beside this script

CACHE = Path(os.environ.get("EXTMOD_TEST_CACHE", "/var/cache/extmod-tests"))
LLVM_SUFFIX = "-16"
# Linux 7.x needs LLVM 17.0.1 or newer (scripts/min-tool-version.sh); Debian 13 ships
# clang 19, and Debian 12 has the same clang-19 (1:19.1.7) in its main archive.
LLVM73_SUFFIX = "-19"
JOBS = str(os.cpu_count() or 2)

# tinyconfig + what a qemu boot with a busybox initramfs and module loading needs.
TINY_ENABLE = [
    "64BIT",
    "MODULES",
    "MODULE_UNLOAD",
    "PRINTK",
    "BLK_DEV_INITRD",
    "TTY",
    "SERIAL_8250",
    "SERIAL_8250_CONSOLE",
    "BINFMT_ELF",
    "BINFMT_SCRIPT",
    "DEVTMPFS",
    "PROC_FS",
    "SYSFS",
    "LTO_CLANG_THIN",
    # Module signatures (issue 26: one tiny kernel per generation serves the plain, signed
    # and verify tests). The kernel makes its own signing key (certs/signing_key.pem, .x509)
    # and trusts it, as a kernel built here does; without MODULE_SIG_FORCE a module signed
    # with another key (extmod's MOK) still loads, tainting the kernel, and extmod verify
    # boots with module.sig_enforce=1 when extmod signs with the kernel's key.
    "MODULE_SIG",
    "MODULE_SIG_SHA256",
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

RECIPE_VERSION = "4"

# The defconfig tree: x86_64 defconfig with ThinLTO instead of no LTO, and a local version so
# its release differs from the tiny tree's (and looks like a distro's, "6.1.192-lto").
DEFCONFIG_ENABLE = ["LTO_CLANG_THIN"]
DEFCONFIG_DISABLE = ["LTO_NONE"]
DEFCONFIG_LOCALVERSION = "-lto"

# Debian 12's DKMS packages the parity test registers with both tools (issue 3).
DKMS_PACKAGES = [
    "acpi-call-dkms",
    "v4l2loopback-dkms",
    "xtables-addons-dkms",
    "jool-dkms",
    "ddcci-dkms",
    "dm-writeboost-dkms",
    "evdi-dkms",
    "tp-smapi-dkms",
    "vpoll-dkms",
    "digimend-dkms",
    "lttng-modules-dkms",
    "iptables-netflow-dkms",
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
    # The kernel linux-headers-amd64 (installed by setup.sh) names, not whichever is newest:
    # a machine may have backports' 6.12 headers beside it.
    depends = sh(["dpkg-query", "-W", "-f=${Depends}", "linux-headers-amd64"], quiet=True)
    m = re.search(r"linux-headers-(\S+)", depends)
    link = Path("/lib/modules", m.group(1) if m else "-", "build")
    if not link.is_dir():
        raise SystemExit(f"testtrees: no {link}: apt-get install linux-headers-amd64")
    build = link.resolve()
    kver = link.parent.name
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
    return {
        "kver": kver,
        "build": str(build),
        "vmlinuz": str(vmlinuz),
        "image_control": str(control),
        "header_debs": str(debs),
    }


def apt_download(pkg: str, dest: Path) -> Path:
    """``apt-get download`` one package into ``dest`` through the private archive config
    (bookworm-backports included: a machine whose headers come from there is an ordinary
    machine); returns the .deb."""
    sh(["apt-get", *aptarchive.ready(), "download", "-q", pkg], cwd=dest, quiet=True)
    return next(dest.glob(f"{pkg}_*.deb"))


def headers_packages(kver: str) -> list[str]:
    """linux-headers-KVER and the packages of its tree: -common and linux-kbuild-X.Y."""
    depends = sh(["dpkg-query", "-W", "-f=${Depends}", f"linux-headers-{kver}"], quiet=True)
    names = [d.split()[0] for d in depends.split(",")]
    return [
        f"linux-headers-{kver}",
        *(n for n in names if n.startswith(("linux-headers-", "linux-kbuild-"))),
    ]


def source_tree(
    final: Path,
    done: str,
    base: str,
    enable: list[str],
    disable: list[str],
    set_str: list[str],
    targets: list[str],
    what: str,
    tarball: Path = Path("/usr/src/linux-source-6.1.tar.xz"),
    llvm: str = LLVM_SUFFIX,
) -> None:
    """A linux-source tarball in ``final``: ``base`` config, options enabled/disabled (and
    ``set_str`` NAME VALUE pairs), olddefconfig, then make ``targets`` with clang-16 (or
    ``llvm``'s).
    Skipped when ``final/done`` exists; built in ``final.partial`` and renamed."""
    if (final / done).exists():
        return
    part = final.with_name(final.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    log(f"extracting {tarball.name} for the {what}")
    sh(["tar", "-xf", str(tarball), "-C", str(part), "--strip-components=1"])
    make = ["make", f"LLVM={llvm}", f"-j{JOBS}"]
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
    source_tree(
        final,
        "arch/x86/boot/bzImage",
        "tinyconfig",
        TINY_ENABLE,
        TINY_DISABLE,
        [],
        ["bzImage", "modules"],
        "tiny clang ThinLTO kernel",
    )
    rel = (final / "include/config/kernel.release").read_text().strip()
    return {
        "kver": rel,
        "build": str(final),
        "bzimage": str(final / "arch/x86/boot/bzImage"),
        "key": str(final / "certs/signing_key.pem"),
        "cert": str(final / "certs/signing_key.x509"),
        "version": version,
    }


def defconfig_tree() -> dict[str, str]:
    version = pkg_version("linux-source-6.1")
    key = recipe_hash(
        version,
        LLVM_SUFFIX,
        "defconfig",
        *DEFCONFIG_ENABLE,
        "-",
        *DEFCONFIG_DISABLE,
        DEFCONFIG_LOCALVERSION,
    )
    final = CACHE / "trees" / f"thinlto-defconfig-{version}-{key}"
    source_tree(
        final,
        "include/generated/utsrelease.h",
        "defconfig",
        DEFCONFIG_ENABLE,
        DEFCONFIG_DISABLE,
        ["LOCALVERSION", DEFCONFIG_LOCALVERSION],
        ["modules_prepare"],
        "defconfig ThinLTO tree",
    )
    rel = (final / "include/config/kernel.release").read_text().strip()
    return {"kver": rel, "build": str(final), "version": version}


# -- the 6.12 generation (issue 13): Debian 12 users get it from bookworm-backports ---------
def _apt_show(pkg: str, suite_marker: str) -> dict[str, str]:
    """The newest stanza of ``apt-cache show PKG`` (private archive config) whose version
    carries ``suite_marker`` ("~bpo12" for bookworm-backports, "" for any)."""
    out = sh(["apt-cache", *aptarchive.ready(), "show", pkg], quiet=True)
    stanzas = [dict(re.findall(r"^([A-Za-z-]+): (.*)$", st, re.M)) for st in out.split("\n\n")]
    stanzas = [st for st in stanzas if "Version" in st and suite_marker in st["Version"]]
    if not stanzas:
        raise SystemExit(f"testtrees: {pkg}: no version with {suite_marker!r} in the archive")
    best = stanzas[0]
    for st in stanzas[1:]:
        if (
            subprocess.run(
                ["dpkg", "--compare-versions", st["Version"], "gt", best["Version"]]
            ).returncode
            == 0
        ):
            best = st
    return best


def _depends(stanza: dict[str, str], prefixes: tuple[str, ...]) -> list[str]:
    names = [d.strip().split()[0] for d in stanza.get("Depends", "").split(",") if d.strip()]
    return [n for n in names if n.startswith(prefixes)]


def _download(pkgs: list[str], dest: Path) -> list[Path]:
    sh(["apt-get", *aptarchive.ready(), "download", "-q", *pkgs], cwd=dest, quiet=True)
    return [next(dest.glob(f"{p.split('=')[0]}_*.deb")) for p in pkgs]


def debian612_tree() -> dict[str, str]:
    """Debian's newest 6.12 headers from bookworm-backports (linux-headers-KVER, its -common
    and linux-kbuild) unpacked with dpkg-deb -x into ROOT, and the kernel image's vmlinuz.
    The one absolute path of Debian's split headers, the arch tree's ``include
    /usr/src/linux-headers-KVER-common/Makefile``, is pointed at ROOT's -common tree: the
    tree builds as if installed, and the host's /usr/src is not touched."""
    meta = _apt_show("linux-headers-amd64", "~bpo12")
    headers = _depends(meta, ("linux-headers-",))[0]
    kver = headers.removeprefix("linux-headers-")
    final = CACHE / "debian-6.12" / f"{kver}-{recipe_hash(meta['Version'])}"
    root = final / "root"
    if not (final / "done").exists():
        part = final.with_name(final.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        (part / "debs").mkdir(parents=True)
        log(f"apt-get download Debian's {kver} headers and image (bookworm-backports)")
        _unpack_split_headers(headers, part, root)
        image = part / "image"
        image.mkdir()
        (deb,) = _download([f"linux-image-{kver}"], image)
        sh(["dpkg-deb", "-x", str(deb), str(image / "x")])
        shutil.copyfile(image / "x/boot" / f"vmlinuz-{kver}", part / "vmlinuz")
        shutil.rmtree(image)
        (part / "done").write_text(meta["Version"] + "\n")
        shutil.rmtree(final, ignore_errors=True)
        part.rename(final)
        final.parent.chmod(0o755)
    build = root / "usr/src" / f"linux-headers-{kver}"
    common = next(p for p in (root / "usr/src").iterdir() if p.name.endswith("-common"))
    return {
        "kver": kver,
        "build": str(build),
        "source": str(common),
        "vmlinuz": str(final / "vmlinuz"),
        "header_debs": str(final / "debs"),
        "version": meta["Version"],
    }


def _unpack_split_headers(headers: str, part: Path, root: Path) -> None:
    """Debian's split headers (``headers``, its -common and linux-kbuild) downloaded into
    ``part/debs`` and unpacked with dpkg-deb -x into ``part/root``; the arch tree's one
    absolute path (``include /usr/src/linux-headers-KVER-common/Makefile``) pointed at
    ``root``'s -common (``part/root`` once renamed), so the host's /usr/src is not touched."""
    hstanza = _apt_show(headers, "")
    names = [headers, *_depends(hstanza, ("linux-headers-", "linux-kbuild-"))]
    for deb in _download(names, part / "debs"):
        sh(["dpkg-deb", "-x", str(deb), str(part / "root")])
    common_pkg = _depends(hstanza, ("linux-headers-",))[0]
    mk = part / "root/usr/src" / headers / "Makefile"
    text = mk.read_text()
    want = f"include /usr/src/{common_pkg}/Makefile"
    if want not in text:
        raise SystemExit(f"testtrees: {mk}: no line {want!r}")
    mk.write_text(text.replace(want, f"include {root}/usr/src/{common_pkg}/Makefile"))


def old_abi_tree(current: str) -> dict[str, str]:
    """The previous ABI of the gcc tree's series (6.1.0-N-1 for 6.1.0-N): Debian's headers
    unpacked with dpkg-deb -x (their -common and linux-kbuild too), the arch tree's
    absolute include pointed at the unpacked -common, as for ``debian612``. For the
    benchmark's kernel ABI update (bench/compare.py f)."""
    m = re.fullmatch(r"(\d+\.\d+\.\d+)-(\d+)-(\w+)", current)
    if not m:
        raise SystemExit(f"testtrees: {current}: not a Debian kernel release")
    kver = f"{m.group(1)}-{int(m.group(2)) - 1}-{m.group(3)}"
    headers = f"linux-headers-{kver}"
    hstanza = _apt_show(headers, "")
    final = CACHE / "debian-abi" / f"{kver}-{recipe_hash(hstanza['Version'])}"
    root = final / "root"
    if not (final / "done").exists():
        part = final.with_name(final.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        (part / "debs").mkdir(parents=True)
        log(f"apt-get download Debian's {kver} headers (the previous ABI)")
        _unpack_split_headers(headers, part, root)
        (part / "done").write_text(hstanza["Version"] + "\n")
        shutil.rmtree(final, ignore_errors=True)
        part.rename(final)
        final.parent.chmod(0o755)
    build = root / "usr/src" / headers
    common = next(p for p in (root / "usr/src").iterdir() if p.name.endswith("-common"))
    return {"kver": kver, "build": str(build), "source": str(common)}


def source612() -> tuple[Path, str]:
    """linux-source-6.12's tarball (the archive's candidate: bookworm-security, or
    bookworm-backports), unpacked from its .deb into the cache; (tarball, version)."""
    meta = _apt_show("linux-source-6.12", "")
    version = meta["Version"]
    final = CACHE / "src" / f"linux-source-{version}"
    tarball = final / "usr/src/linux-source-6.12.tar.xz"
    if not tarball.exists():
        part = final.with_name(final.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        log(f"apt-get download linux-source-6.12 {version}")
        (deb,) = _download([f"linux-source-6.12={version}"], part)
        sh(["dpkg-deb", "-x", str(deb), str(part)])
        deb.unlink()
        shutil.rmtree(final, ignore_errors=True)
        part.rename(final)
    return tarball, version


def _tiny_tree(
    tarball: Path, version: str, enable: list[str], llvm: str, name: str, what: str
) -> dict[str, str]:
    """The tiny recipe (tinyconfig + ``enable``, bzImage and modules) on a linux-source
    tarball with LLVM=``llvm``; boots in qemu."""
    key = recipe_hash(version, llvm, *enable, "-", *TINY_DISABLE)
    final = CACHE / "trees" / f"{name}-{version}-{key}"
    source_tree(
        final,
        "arch/x86/boot/bzImage",
        "tinyconfig",
        enable,
        TINY_DISABLE,
        [],
        ["bzImage", "modules"],
        what,
        tarball,
        llvm,
    )
    rel = (final / "include/config/kernel.release").read_text().strip()
    return {
        "kver": rel,
        "build": str(final),
        "bzimage": str(final / "arch/x86/boot/bzImage"),
        "version": version,
        "llvm": llvm,
    }


def thinlto612_tree(tarball: Path, version: str) -> dict[str, str]:
    """The tiny clang ThinLTO kernel of ``thinlto_tree``, from linux-source-6.12 (``tarball``
    of ``version``, see source612): the generation without a kbuild ThinLTO cache."""
    return _tiny_tree(
        tarball, version, TINY_ENABLE, LLVM_SUFFIX, "thinlto-tiny", "tiny clang ThinLTO 6.12 kernel"
    )


# -- the Linux 7 generation (issue 21): Debian 13 users get it from trixie-backports ------
def _unpacked13(pkg: str, base: Path, into: str = "") -> tuple[Path, str]:
    """Debian 13's candidate of ``pkg`` (trixie or trixie-backports), downloaded and
    unpacked with dpkg-deb -x into ``base/VERSION/into``, cached by version; (dir, version)."""
    opts = aptarchive.ready(aptarchive.SUITE_13)
    policy = sh(["apt-cache", *opts, "policy", pkg], quiet=True)
    m = re.search(r"Candidate: (\S+)", policy)
    if not m or m.group(1) == "(none)":
        raise SystemExit(f"testtrees: no {pkg} in Debian 13's archive")
    version = m.group(1)
    final = base / version
    if not (final / "done").exists():
        part = final.with_name(final.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        log(f"apt-get download {pkg} {version} (Debian 13)")
        sh(["apt-get", *opts, "download", "-q", f"{pkg}={version}"], cwd=part, quiet=True)
        (deb,) = part.glob(f"{pkg}_*.deb")
        sh(["dpkg-deb", "-x", str(deb), str(part / into)])
        deb.unlink()
        (part / "done").write_text(version + "\n")
        shutil.rmtree(final, ignore_errors=True)
        part.rename(final)
        base.chmod(0o755)
    return final / into, version


def source73() -> tuple[Path, str]:
    """linux-source-7.3's tarball from trixie-backports; (tarball, version)."""
    root, version = _unpacked13("linux-source-7.3", CACHE / "src" / "linux-source-13")
    return root / "usr/src/linux-source-7.3.tar.xz", version


# The tiny 7.3 kernel links vmlinux with distributed ThinLTO (new in 7.x: the linker only
# makes the index, kbuild runs the backends); its modules are still linked by ld.lld with
# in-process ThinLTO. So one kernel serves both the THIN_DIST question and the load tests.
TINY73_ENABLE = [o for o in TINY_ENABLE if o != "LTO_CLANG_THIN"] + ["LTO_CLANG_THIN_DIST"]


def thinlto73_tree(tarball: Path, version: str) -> dict[str, str]:
    """A tiny clang-19 kernel from linux-source-7.3 with CONFIG_LTO_CLANG_THIN_DIST and
    module signatures."""
    return _tiny_tree(
        tarball,
        version,
        TINY73_ENABLE,
        LLVM73_SUFFIX,
        "thinlto-dist-tiny",
        "tiny clang distributed-ThinLTO 7.3 kernel",
    )


def _dkms_source(name: str, marker: str) -> dict[str, str]:
    """The newest ``name`` whose version carries ``marker``, downloaded and unpacked with
    dpkg-deb -x (never installed), cached by version: its /usr/src/NAME-VERSION."""
    version = _apt_show(name, marker)["Version"]
    final = CACHE / name.removesuffix("-dkms").removesuffix("-kernel") / f"{name}-{version}"
    if not (final / "done").exists():
        part = final.with_name(final.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        log(f"apt-get download {name} {version}")
        (deb,) = _download([f"{name}={version}"], part)
        sh(["dpkg-deb", "-x", str(deb), str(part / "x")])
        deb.unlink()
        (part / "done").write_text(version + "\n")
        shutil.rmtree(final, ignore_errors=True)
        part.rename(final)
        final.parent.chmod(0o755)
    (src,) = (final / "x/usr/src").iterdir()
    return {"version": version, "src": str(src)}


def zfs_packages() -> dict[str, dict[str, str]]:
    """zfs-dkms, the most used DKMS package: bookworm's (contrib) and bookworm-backports'
    (contrib); keyed "bookworm" and "backports"."""
    return {
        suite: _dkms_source("zfs-dkms", marker)
        for suite, marker in (("bookworm", "+deb12"), ("backports", "~bpo12"))
    }


def nvidia_package() -> dict[str, str]:
    """bookworm's nvidia-kernel-dkms (non-free; the 535 series): the NVIDIA package of
    the benchmark's case h. Its source holds the closed nv-kernel.o_binary; it builds
    against a kernel's headers without a GPU or the rest of the driver."""
    return _dkms_source("nvidia-kernel-dkms", "+deb12")


def nginx_server() -> dict[str, str]:
    """bookworm's nginx (its http_dav_module serves PUT): the WebDAV engine of the shared
    build store's tests, unpacked (no maintainer script, so no system service); a test
    starts it on 127.0.0.1 with a config of its own and stops it by its PID."""
    version = _candidates(["nginx"]).get("nginx", "(none)")
    final = CACHE / "nginx" / recipe_hash(f"nginx={version}")
    if not (final / "done").exists():
        part = final.with_name(final.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        log(f"apt-get download nginx {version}")
        deb = apt_download("nginx", part)
        sh(["dpkg-deb", "-x", str(deb), str(part / "root")])
        deb.unlink()
        (part / "done").write_text(f"nginx {version}\n")
        shutil.rmtree(final, ignore_errors=True)
        part.rename(final)
    return {"binary": str(final / "root/usr/sbin/nginx"), "version": version}


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
    return {
        "dkms": str(final / "dkms/usr/sbin/dkms"),
        "dkms_version": versions["dkms"],
        "dkms_root": str(final / "dkms"),
        "packages": packages,
    }


def trixie_dkms() -> dict[str, str]:
    """Debian 13's dkms (3.2.2), unpacked: the DKMS the conformance test also compares
    extmod's ``dkms`` with."""
    root, version = _unpacked13("dkms", CACHE / "dkms-trixie", "dkms")
    return {"dkms": str(root / "usr/sbin/dkms"), "dkms_version": version, "dkms_root": str(root)}


def chroot_base(release: str = aptarchive.SUITE) -> dict[str, str]:
    """A minimal Debian 12 (or 13: ``release`` trixie; or sid) system for the apt tests
    (mmdebstrap, variant apt, with what extmod's package needs to build modules: python3,
    gcc, make, kmod, openssl, patch; and mount, which every Debian system has) as a
    tarball keyed by suite and day. Its apt sources are this machine's mirror entries with
    contrib, non-free and RELEASE-backports (aptarchive), written into the chroot only;
    its package lists are kept, so a test installs without an update."""
    include = "ca-certificates,python3,gcc,make,kmod,openssl,patch,libc6-dev,mount"
    d = CACHE / "chroot"
    tar = d / f"{release}-{time.strftime('%Y%m%d')}-{recipe_hash(include)}.tar"
    if not tar.exists():
        log(f"mmdebstrap a Debian {release} base system for the apt tests")
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob(f"{release}-*.tar*"):
            old.unlink()
        tmp = tar.with_name(tar.name + ".tmp")
        res = subprocess.run(
            [
                "mmdebstrap",
                "--variant=apt",
                "--skip=cleanup/apt/lists",
                # sid's Release on this mirror can be weeks past its Valid-Until (a mirror
                # that is a snapshot); the chroot keeps its lists and never updates them
                *(["--aptopt=Acquire::Check-Valid-Until false"] if release == "sid" else []),
                f"--include={include}",
                "--format=tar",
                release,
                str(tmp),
                "-",
            ],
            input=aptarchive.sources_text(release),
            text=True,
            capture_output=True,
        )
        if res.returncode != 0:
            raise SystemExit(f"testtrees: mmdebstrap failed: {res.stderr[-2000:]}")
        tmp.rename(tar)
    (d / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    return {"tarball": str(tar), "archives": str(d / "archives")}


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
    final = variant_tree(
        Path(gen513["build"]),
        "-cachedir",
        dict.fromkeys(("include/config/auto.conf", ".config"), _add_cachedir_option),
    )
    return {"kver": gen513["kver"], "build": str(final), "cachedir": KERNEL_CACHEDIR}


TIMES: list[tuple[str, float]] = []


def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one preparation step and record its wall time (printed at the end)."""
    t0 = time.monotonic()
    result = fn(*args)
    TIMES.append((name, time.monotonic() - t0))
    return result


def main() -> int:
    host = hosts.this_host()
    if not host.whole_suite:  # issue 33: the trees' recipes are Debian 12's for now
        raise SystemExit(
            f"testtrees: the real kernel trees are made on Debian 12 (bookworm) hosts for "
            f"now, not on Debian {host.release} ({host.codename}); here, "
            f"'bash scripts/test.sh --fast' runs the fast suite"
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    aptarchive.ready()  # the private package lists, once, before two lanes use them
    aptarchive.ready(aptarchive.SUITE_13)
    gcc = timed("gcc", gcc_tree)
    # Two lanes (issue 26): the kernel builds keep both CPUs busy, while the downloads, the
    # unpacking and the chroot mostly wait on the network and the disk, so they run beside
    # them in a second thread instead of after them.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as lane:
        src612 = lane.submit(timed, "source612", source612)
        src73 = lane.submit(timed, "source73", source73)
        fetches: dict[str, concurrent.futures.Future[Any]] = {
            name: lane.submit(timed, name, fn, *args)
            for name, fn, args in (
                ("debian612", debian612_tree, ()),
                ("oldabi", old_abi_tree, (gcc["kver"],)),
                ("dkms", dkms_packages, ()),
                ("dkms13", trixie_dkms, ()),
                ("zfs", zfs_packages, ()),
                ("nvidia", nvidia_package, ()),
                ("nginx", nginx_server, ()),
                ("chroot", chroot_base, ()),
                ("chroot13", chroot_base, (aptarchive.SUITE_13,)),
                ("chrootsid", chroot_base, (aptarchive.SUITE_SID,)),
            )
        }
        thin = timed("thinlto", thinlto_tree)
        gen513 = timed("gen513", gen513_tree, thin)
        cachedir = timed("cachedir", cachedir_tree, gen513)
        defconfig = timed("defconfig", defconfig_tree)
        thin612 = timed("thinlto612", thinlto612_tree, *src612.result())
        thin73 = timed("thinlto73", thinlto73_tree, *src73.result())
        fetched = {name: f.result() for name, f in fetches.items()}
    manifest = {
        **fetched,
        "gcc": gcc,
        "thinlto": thin,
        # the tiny kernel signs its modules and trusts its own key: the signature tests'
        # kernel too (a kernel of its own cost 4 minutes of every cold run)
        "sig": thin,
        "gen513": gen513,
        "cachedir": cachedir,
        "defconfig": defconfig,
        "thinlto612": thin612,
        "thinlto73": thin73,
        "busybox": shutil.which("busybox") or "/bin/busybox",
    }
    tmp = CACHE / "trees.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.rename(CACHE / "trees.json")
    # World-readable, so tests can build as an unprivileged user.
    for d in (
        CACHE,
        CACHE / "trees",
        CACHE / "debian-image",
        CACHE / "debian-6.12",
        CACHE / "debian-abi",
    ):
        d.chmod(0o755)
    for name, secs in TIMES:
        log(f"{name:14} {secs:7.1f} s")
    log(f"ready in {time.monotonic() - start:.0f} s (two lanes): {CACHE / 'trees.json'}")
    return 0


if __name__ == "__main__":
    if re.search(r"\s", str(CACHE)):
        raise SystemExit("testtrees: EXTMOD_TEST_CACHE must not contain white space")
    sys.exit(main())
