"""Finding kernels and their build trees; reading their configuration."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from extmod.errors import KernelError
from extmod.paths import Paths

# What `make M=...` needs from a prepared tree (`make modules_prepare`), in the order kbuild
# would trip over them. Module.symvers is optional: without it modpost warns on every symbol.
PREPARED_FILES = (
    "Makefile",
    "include/config/auto.conf",
    "include/generated/autoconf.h",
    "include/generated/utsrelease.h",
    "scripts/basic/fixdep",
    "scripts/mod/modpost",
)

# Where kbuild itself puts the ThinLTO cache for `make -C <tree> M=<dir>`, told apart by the
# line in the top Makefile (shared/DESIGN.md section 1).
KBUILD_CACHE_MODULE_DIR = "module-dir"  # 5.12: $(extmod-prefix), defined before use
KBUILD_CACHE_KERNEL_TREE = "kernel-tree"  # 5.13-6.9: $(extmod_prefix) still undefined there
KBUILD_CACHE_NONE = "none"  # 6.10+, 5.15.y/6.1.y since June 2024 (commit aba091547ef6)

_ARCHES = (  # (config symbol, uname -m), most specific first
    ("CONFIG_X86_64", "x86_64"), ("CONFIG_X86_32", "i686"), ("CONFIG_ARM64", "aarch64"),
    ("CONFIG_ARM", "armv7l"), ("CONFIG_PPC64", "ppc64le"), ("CONFIG_S390", "s390x"),
    ("CONFIG_RISCV", "riscv64"), ("CONFIG_LOONGARCH", "loongarch64"), ("CONFIG_MIPS", "mips"),
)


def read_config(path: Path) -> dict[str, str]:
    """Parse a kconfig file (auto.conf or .config): ``CONFIG_X`` -> value, strings unquoted."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("CONFIG_") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        values[key] = value
    return values


@dataclass(frozen=True)
class Kernel:
    release: str
    build_dir: Path
    config: Mapping[str, str]
    config_file: Path
    missing: str | None  # first file of PREPARED_FILES that is missing, None when prepared

    @property
    def arch(self) -> str:
        for symbol, name in _ARCHES:
            if self.config.get(symbol) == "y":
                return name
        return "unknown"

    @property
    def version(self) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", self.release)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    @property
    def lto(self) -> str:
        if self.config.get("CONFIG_LTO_CLANG_THIN") == "y":
            return "thin"
        if self.config.get("CONFIG_LTO_CLANG_FULL") == "y":
            return "full"
        return "none"

    @property
    def kbuild_cache(self) -> str:
        """Where this tree's own kbuild would put the ThinLTO cache (if ThinLTO)."""
        text = _top_makefile_text(self.build_dir)
        if "--thinlto-cache-dir=$(extmod_prefix)" in text:
            return KBUILD_CACHE_KERNEL_TREE
        if "--thinlto-cache-dir=$(extmod-prefix)" in text:
            return KBUILD_CACHE_MODULE_DIR
        return KBUILD_CACHE_NONE

    def require_prepared(self) -> None:
        if self.missing:
            raise KernelError(
                f"kernel tree {self.build_dir} is not prepared: {self.missing} is missing "
                f"(run 'make modules_prepare' in it, or install the headers package)")

    def identity(self) -> str:
        """A digest of what makes this kernel this kernel for module builds."""
        return self._identity

    @functools.cached_property
    def _identity(self) -> str:
        h = hashlib.sha256(self.release.encode())
        for name in ("include/config/auto.conf", "Module.symvers"):
            f = self.build_dir / name
            h.update(name.encode() + (f.read_bytes() if f.exists() else b"-"))
        return h.hexdigest()


def _top_makefile_text(build_dir: Path) -> str:
    """The top Makefile, following Debian's one-line ``include <common>/Makefile`` stub."""
    try:
        text = (build_dir / "Makefile").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    m = re.fullmatch(r"\s*include\s+(\S+/Makefile)\s*", text)
    if m:
        try:
            return Path(m.group(1)).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return text
    return text


def load(build_dir: Path) -> Kernel:
    """Read a kernel build tree. Raises KernelError if it is not a kernel tree at all."""
    if not build_dir.is_dir():
        raise KernelError(f"no kernel build tree at {build_dir}")
    missing = next((f for f in PREPARED_FILES if not (build_dir / f).exists()), None)
    config_file = build_dir / "include/config/auto.conf"
    if not config_file.exists():
        config_file = build_dir / ".config"
    if not config_file.exists():
        raise KernelError(f"{build_dir} is not a configured kernel tree: "
                          f"include/config/auto.conf and .config are missing")
    try:
        config = read_config(config_file)
    except OSError as e:
        raise KernelError(f"{config_file}: cannot read: {e.strerror}") from None
    release = _release(build_dir)
    return Kernel(release=release, build_dir=build_dir, config=config,
                  config_file=config_file, missing=missing)


def _release(build_dir: Path) -> str:
    """UTS_RELEASE, which modules carry in their vermagic. Debian's headers have the
    upstream version in include/config/kernel.release (6.1.192) but the ABI release
    (6.1.0-56-amd64) in utsrelease.h."""
    try:
        m = re.search(r'UTS_RELEASE\s+"([^"]+)"',
                      (build_dir / "include/generated/utsrelease.h").read_text())
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        return (build_dir / "include/config/kernel.release").read_text().strip()
    except OSError:
        return build_dir.name


def by_release(paths: Paths, kver: str) -> Kernel:
    if not kver or "/" in kver or kver in (".", ".."):
        raise KernelError(f"invalid kernel release {kver!r}")
    link = paths.modules_dir / kver / "build"
    if not link.exists():
        raise KernelError(f"no kernel {kver}: {link} does not exist "
                          f"(apt-get install linux-headers-{kver})")
    return load(paths.in_root(link))


def find_all(paths: Paths) -> list[Kernel | KernelError]:
    """Every kernel under the root with a build tree, newest release last."""
    found: list[Kernel | KernelError] = []
    if not paths.modules_dir.is_dir():
        return found
    for link in sorted(paths.modules_dir.glob("*/build")):
        try:
            found.append(load(paths.in_root(link)))
        except KernelError as e:
            found.append(e)
    return found
