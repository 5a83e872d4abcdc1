"""The settings table: each setting once, with its parser, default, help, environment
variable and command-line option, and the value types they take (``core/config.py`` reads
them into a ``Config``; docgen and both command lines take them from here)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from extmod.core import verbs

E = TypeVar("E", bound=StrEnum)


class CacheMode(StrEnum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class Location(StrEnum):
    AUTO = "auto"
    DKMS_CONF = "dkms.conf"


class LoadCheck(StrEnum):
    PER_MODULE = "per-module"
    STRICT = "strict"


class VerifyMode(StrEnum):
    """What a check that finds a problem does: [verify] after_install, [guard] mode."""

    OFF = "off"
    WARN = "warn"
    REFUSE = "refuse"


GuardMode = VerifyMode  # apt's guard answers the same three ways


class StoreMode(StrEnum):
    READ_WRITE = "read-write"
    READ_ONLY = "read-only"
    WRITE_ONLY = "write-only"


class MapPaths(StrEnum):
    AUTO = "auto"
    OFF = "off"


class Accel(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class DkmsVersion(StrEnum):
    """The DKMS releases whose command line extmod's ``dkms`` answers as (newest first):
    Debian 13's and Debian 12's. The Debian package Provides the first."""

    V3_2_2 = "3.2.2"
    V3_0_10 = "3.0.10"


class SignMode(StrEnum):
    YES = "yes"
    NO = "no"
    NOT_IN_CHROOT = "not-in-chroot"


# each setting's choices, as the docs and argparse list them
CACHE_MODES = tuple(CacheMode)
LOCATIONS = tuple(Location)
LOAD_CHECK_MODES = tuple(LoadCheck)
VERIFY_MODES = tuple(VerifyMode)
MAP_PATHS_MODES = tuple(MapPaths)
ACCELS = tuple(Accel)
DKMS_VERSIONS = tuple(DkmsVersion)
SIGN_MODES = tuple(SignMode)


def parse_size(text: str) -> int:
    """``"2G"`` -> bytes. Units k, M, G, T (powers of 1024); a bare number is bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)[iI]?[bB]?\s*", text)
    if not m:
        raise ValueError(f"expected a size like 512M or 2G, got {text!r}")
    exponent = " KMGT".index(m.group(2).upper() or " ")
    return int(m.group(1)) * (1 << (10 * exponent))


def parse_duration(text: str) -> int:
    """``"30d"`` -> seconds. Units s, m, h, d, w; a bare number is seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not m:
        raise ValueError(f"expected a duration like 12h or 30d, got {text!r}")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return int(m.group(1)) * unit


def _one_of(choices: type[E]) -> Callable[[str], E]:
    """The parser of a setting whose value is one of an enum's."""

    def parse(text: str) -> E:
        try:
            return choices(text)
        except ValueError:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}") from None

    return parse


def _user_name(text: str) -> str | None:
    if not text:
        return None
    if not all(c.isalnum() or c in "_.-" for c in text) or text == "root":
        raise ValueError(f"expected the name of an unprivileged user, got {text!r}")
    return text


def _whole_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ValueError(f"expected a whole number (at most 18 digits), got {text!r}")
    return int(text)


STORE_SCHEMES = ("redis://", "redis+unix://", "http://", "https://")


def _store_url(text: str) -> str | None:
    """A store.url as given (store/remote.py speaks each scheme), or None for empty."""
    if not text:
        return None
    if not text.startswith(STORE_SCHEMES):
        raise ValueError(f"expected a URL starting with {', '.join(STORE_SCHEMES)}, got {text!r}")
    u = urlsplit(text)
    if u.scheme == "redis+unix" and not u.path:
        raise ValueError(f"{text!r}: a redis+unix URL names the socket's path")
    if u.scheme != "redis+unix" and not u.hostname:
        raise ValueError(f"{text!r}: no host")
    try:
        u.port  # noqa: B018 (a port out of range raises here)
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    return text


# The settings whose TOML value may be a list of strings (else one comma-separated string).
LISTS = frozenset({"store.trust", "guard.critical"})


def _names(text: str) -> tuple[str, ...] | None:
    found = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in found if not all(c.isalnum() or c in "_.+-" for c in n)]
    if bad:
        raise ValueError(f"expected package names, got {bad[0]!r}")
    return found or None


def _paths(text: str) -> tuple[Path, ...] | None:
    found = tuple(Path(p.strip()) for p in text.split(",") if p.strip())
    return found or None


# GNU make's jobserver is a pipe holding one byte per slot, filled before any make reads
# it; a pipe holds 64 KiB (pipe(7)), and no build farm has more slots than this.
MAX_JOBS = 4096


def _job_count(text: str) -> int:
    n = _whole_number(text)
    if n > MAX_JOBS:
        raise ValueError(f"{n} job slots: at most {MAX_JOBS}")
    return n


@dataclass(frozen=True)
class Setting:
    key: str  # "section.name": the TOML key; the Config field is "section_name"
    parse: Callable[[str], Any]
    default: str | None
    help: str
    env: str | None = None
    flag: str | None = None
    verbs: tuple[str, ...] = ()  # the verbs that take ``flag``
    aliases: tuple[str, ...] = ()  # short forms of ``flag``
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def field(self) -> str:
        return self.key.replace(".", "_")


# The verbs that build (core/verbs.py): each takes the build settings' options.
_BUILDING = verbs.extmod_names(jobs=True)

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "thinlto.cache_dir",
        Path,
        None,
        "Base directory of the ThinLTO cache; extmod namespaces it per kernel release "
        "and package. Default: <state dir>/thinlto-cache as root, "
        "$XDG_CACHE_HOME/extmod/thinlto as a user.",
        env="EXTMOD_THINLTO_CACHE_DIR",
        flag="--thinlto-cache-dir",
        metavar="DIR",
        verbs=(*_BUILDING, "clean", "cache show", "cache prune"),
    ),
    Setting(
        "thinlto.cache",
        _one_of(CacheMode),
        "auto",
        "ThinLTO cache for ThinLTO kernels: auto (on, with the .incbin guard), on (the "
        "same, and an error if the kernel is not ThinLTO), off (no persistent cache).",
        env="EXTMOD_THINLTO_CACHE",
        flag="--thinlto-cache",
        verbs=_BUILDING,
        choices=CACHE_MODES,
    ),
    Setting(
        "thinlto.max_size",
        parse_size,
        "2G",
        "Size bound of each cache namespace (lld cache_size_bytes; also 'cache prune').",
    ),
    Setting(
        "thinlto.max_age",
        parse_duration,
        "30d",
        "Cache files unused this long are pruned (lld prune_after).",
    ),
    Setting(
        "thinlto.max_files",
        _whole_number,
        "0",
        "File-count bound of each namespace; 0: no bound (lld cache_size_files).",
    ),
    Setting(
        "build.jobs",
        _job_count,
        "0",
        "Job slots for a whole command (every build it runs and every make of those "
        "builds share them through the GNU make jobserver); 0: the number of CPUs.",
        env="EXTMOD_JOBS",
        flag="--jobs",
        aliases=("-j",),
        metavar="N",
        verbs=_BUILDING,
    ),
    Setting(
        "build.launcher",
        str,
        None,
        "A compiler launcher put before the kernel's own compiler in every make of a build "
        '(CC="ccache gcc-12", CC="ccache clang-16" next to LLVM=-16): ccache, sccache, '
        "distcc, icecc, or a command. Found on PATH before any build starts; ccache's "
        "cache is <state dir>/ccache as root, $XDG_CACHE_HOME/extmod/ccache as a user, "
        "unless CCACHE_DIR is set. The ThinLTO link stays local.",
        env="EXTMOD_LAUNCHER",
        flag="--launcher",
        metavar="CMD",
        verbs=_BUILDING,
    ),
    Setting(
        "build.cache_url",
        str,
        None,
        "A compile cache shared by hosts, for build.launcher = ccache (its remote storage: "
        "redis://HOST:PORT, redis+unix:///PATH, http(s)://...) or sccache (redis://...). "
        "Each host keeps its local cache too; hits need the same paths on every host "
        "(extmod's layout gives them).",
        env="EXTMOD_CACHE_URL",
        flag="--cache-url",
        metavar="URL",
        verbs=_BUILDING,
    ),
    Setting(
        "build.map_paths",
        _one_of(MapPaths),
        "auto",
        "With build.launcher, a root build sees the kernel's trees and its own build dir "
        "at paths that do not name the kernel release (<state dir>/view/kernel/build, "
        ".../kernel/source, .../dkms, in the build's private mount namespace), so a compile "
        "cache hits across kernel ABIs for every unit whose headers did not change. off: "
        "the real paths. Builds as --build-user use the real paths.",
        env="EXTMOD_MAP_PATHS",
        flag="--map-paths",
        metavar="MODE",
        verbs=_BUILDING,
        choices=MAP_PATHS_MODES,
    ),
    Setting(
        "build.user",
        _user_name,
        None,
        "As root: run every compile, dkms.conf evaluation and package script (but "
        "PRE_INSTALL/POST_INSTALL) as this unprivileged user; only the install runs as "
        "root. Empty: root builds.",
        env="EXTMOD_BUILD_USER",
        flag="--build-user",
        metavar="USER",
        verbs=_BUILDING,
    ),
    Setting(
        "build.environment",
        Path,
        None,
        "A shell file whose exported variables every build step gets (sourced by bash "
        "at each build; DKMS 3.3's framework.conf build_environment). PATH is kept "
        "extmod's. The variables are inputs of the build: a change rebuilds.",
        env="EXTMOD_BUILD_ENVIRONMENT",
    ),
    Setting(
        "store.max_size",
        parse_size,
        "4G",
        "The build store (finished builds by their inputs digest: a re-add, unbuild, clean "
        "or reinstall of the same build installs without compiling) beyond this size loses "
        "its least recently used builds, after a command that built; 0: no store.",
        env="EXTMOD_STORE_MAX_SIZE",
    ),
    Setting(
        "store.max_age",
        parse_duration,
        "90d",
        "Builds in the store unused this long are removed (as store.max_size); 0: no bound.",
        env="EXTMOD_STORE_MAX_AGE",
    ),
    Setting(
        "store.url",
        _store_url,
        None,
        "A build store shared by hosts (redis://HOST[:PORT][/DB], redis+unix:///PATH, "
        "http(s)://HOST/PATH as nginx's WebDAV serves it): a host fetches a build another "
        "host made with the same inputs instead of compiling, and uploads what it builds. "
        "A fetched build is taken only when its signature verifies (store.trust).",
        env="EXTMOD_STORE_URL",
    ),
    Setting(
        "store.mode",
        _one_of(StoreMode),
        "read-write",
        "What this host does with store.url: read-write (fetch and upload), read-only "
        "(fetch; a host that must not publish), write-only (upload; a build host).",
        env="EXTMOD_STORE_MODE",
        choices=tuple(StoreMode),
    ),
    Setting(
        "store.trust",
        _paths,
        None,
        "Certificates (comma-separated files, DER or PEM) a build fetched from store.url "
        "must be signed by. Default: this host's signing certificate (sign.cert), so a "
        "fleet sharing one MOK trusts itself. Uploads are signed with sign.key.",
        env="EXTMOD_STORE_TRUST",
    ),
    Setting(
        "store.timeout",
        _whole_number,
        "10",
        "Seconds one whole fetch or upload on store.url may take (a deadline, not a "
        "socket timeout); a store that is down, slow or answers badly is said once per "
        "command, not asked again in it, and the build is made here.",
        env="EXTMOD_STORE_TIMEOUT",
    ),
    Setting(
        "guard.mode",
        _one_of(GuardMode),
        "warn",
        "What apt's guard (DPkg::Pre-Install-Pkgs, written by install-hooks --for debian) "
        "does when an incoming kernel's headers fail a preflight build of a registered "
        "package: off, warn (apt goes on; the module that will be missing is named), "
        "refuse (apt stops before dpkg unpacks anything, when the package is critical).",
        env="EXTMOD_GUARD",
        choices=tuple(GuardMode),
    ),
    Setting(
        "guard.critical",
        _names,
        None,
        "Packages a system cannot boot without (comma-separated names), besides those "
        "whose modules the running kernel's initramfs carries: the ones guard.mode = "
        "refuse refuses a kernel for.",
        env="EXTMOD_GUARD_CRITICAL",
    ),
    Setting(
        "build.keep_max_size",
        parse_size,
        "4G",
        "Kept build dirs (each package's last build per kernel, for quick rebuilds) beyond "
        "this size are removed, least recently used first, after a command that built; 0: "
        "no bound. A removed one only makes the next build of that pair a full one.",
        env="EXTMOD_BUILD_KEEP_MAX_SIZE",
    ),
    Setting(
        "build.keep_max_age",
        parse_duration,
        "60d",
        "Kept build dirs unused this long are removed (as build.keep_max_size).",
        env="EXTMOD_BUILD_KEEP_MAX_AGE",
    ),
    Setting(
        "build.dkms_conf_timeout",
        parse_duration,
        "120",
        "How long bash may take to evaluate a dkms.conf (a loop that never ends is an "
        "error naming the file, not a hang).",
        env="EXTMOD_DKMS_CONF_TIMEOUT",
    ),
    Setting(
        "install.location",
        _one_of(Location),
        "auto",
        "Where modules go under /lib/modules/KVER: auto (where DKMS puts them on this "
        "distribution: /updates/dkms on Debian, Ubuntu and Arch, /extra on Fedora and "
        "RHEL, /updates on SUSE, else DEST_MODULE_LOCATION), or dkms.conf (always "
        "DEST_MODULE_LOCATION).",
        env="EXTMOD_INSTALL_LOCATION",
    ),
    Setting(
        "install.load_check",
        _one_of(LoadCheck),
        "per-module",
        "A module that would not load into the kernel (wrong vermagic, a symbol nothing "
        "exports, a CRC mismatch): per-module leaves out that module, installs the "
        "others and names it in status, doctor and the summary; strict installs none "
        "of the package (exit 9). --force installs everything either way.",
        env="EXTMOD_LOAD_CHECK",
    ),
    Setting(
        "verify.after_install",
        _one_of(VerifyMode),
        "off",
        "After autoinstall and kernel-postinst: boot each kernel they installed modules "
        "for in a VM and load them (extmod verify). warn prints a failure and keeps the "
        "install; refuse uninstalls a package whose module fails to load (a missing "
        "device in the VM only warns) and puts back the version installed before.",
        env="EXTMOD_VERIFY_AFTER_INSTALL",
        flag="--verify",
        verbs=verbs.extmod_names(verify_after=True),
        metavar="MODE",
        choices=VERIFY_MODES,
    ),
    Setting(
        "verify.timeout",
        parse_duration,
        "120",
        "How long one verification VM may run, boot to power-off (a VM that hangs or "
        "panics is ended then and reported).",
        env="EXTMOD_VERIFY_TIMEOUT",
        flag="--timeout",
        verbs=("verify",),
        metavar="DURATION",
    ),
    Setting(
        "verify.accel",
        _one_of(Accel),
        "auto",
        "How the VM runs: kvm, tcg (emulation, slower), or auto: KVM when /dev/kvm is "
        "usable (a /dev/kvm that cannot run a guest is found out once and remembered).",
        env="EXTMOD_VERIFY_ACCEL",
        flag="--accel",
        verbs=("verify",),
        choices=ACCELS,
    ),
    Setting(
        "verify.memory",
        parse_size,
        "1G",
        "Memory of the verification VM.",
        env="EXTMOD_VERIFY_MEMORY",
        flag="--memory",
        verbs=("verify",),
        metavar="SIZE",
    ),
    Setting(
        "dkms.version",
        _one_of(DkmsVersion),
        DKMS_VERSIONS[0],
        "The DKMS release extmod's dkms command answers as: its --version, its status "
        "lines and its messages, and where it looks for kernel headers (3.2.2: under "
        "--installtree; 3.0.10: always /lib/modules). Choices: " + ", ".join(DKMS_VERSIONS) + ".",
        env="EXTMOD_DKMS_VERSION",
        choices=DKMS_VERSIONS,
    ),
    Setting(
        "sign.key",
        Path,
        None,
        "Private key for sign-file on CONFIG_MODULE_SIG kernels. Default: "
        "<state dir>/keys/mok.key, generated with openssl on first use (0600 in a 0700 "
        "dir, never overwritten). A passphrase-protected or missing key is an error "
        "before any build starts.",
    ),
    Setting(
        "sign.cert",
        Path,
        None,
        "DER certificate matching sign.key (enroll it with mokutil --import). Default: "
        "<state dir>/keys/mok.pub.",
    ),
    Setting(
        "sign.modules",
        _one_of(SignMode),
        "yes",
        "Sign the modules for a CONFIG_MODULE_SIG kernel: yes, no, or not-in-chroot "
        "(not when extmod runs in a chroot, as DKMS 3.4's default; framework.conf's "
        "try_sign_modules = true|false|not_in_chroot sets it for the dkms command).",
        env="EXTMOD_SIGN_MODULES",
        choices=SIGN_MODES,
    ),
    Setting(
        "sign.file",
        str,
        None,
        "The sign-file program; $kernelver in it is the target kernel's release (DKMS's "
        "framework.conf sign_file). Default: the kernel tree's scripts/sign-file.",
    ),
)
