"""Finding kernels and their build trees; reading their configuration."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from extmod.core import hints
from extmod.core.errors import KernelError
from extmod.core.paths import Paths, release_problem

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
    ("CONFIG_X86_64", "x86_64"),
    ("CONFIG_X86_32", "i686"),
    ("CONFIG_ARM64", "aarch64"),
    ("CONFIG_ARM", "armv7l"),
    ("CONFIG_PPC64", "ppc64le"),
    ("CONFIG_S390", "s390x"),
    ("CONFIG_RISCV", "riscv64"),
    ("CONFIG_LOONGARCH", "loongarch64"),
    ("CONFIG_MIPS", "mips"),
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
    # The path the kernel was named by: ROOT/lib/modules/KVER/build (a link, unresolved) or
    # the --kernel-dir as given. None: ``build_dir`` itself.
    named: Path | None = None

    @property
    def source_dir_as_named(self) -> Path:
        """``kernel_source_dir`` as DKMS gives it to a dkms.conf: /lib/modules/KVER/build as
        written (dkms 3.0.10 _get_kernel_dir), so ${kernel_source_dir/%build/source} finds
        Debian's split -common tree at /lib/modules/KVER/source. When that path does not
        lead to the tree extmod reads (an absolute link inside a staging --root), the
        resolved tree, so a build never reaches a different kernel."""
        if self.named is None or self.named == self.build_dir:
            return self.build_dir
        try:
            same = self.named.resolve() == self.build_dir.resolve()
        except OSError:
            same = False
        return self.named if same else self.build_dir

    @functools.cached_property
    def source_trees(self) -> tuple[Path, ...]:
        """Every dir a build of this kernel reads and must never write (resolved): the build
        tree, the source tree next to it (/lib/modules/KVER/source, Debian's -common), the
        trees the build tree's top-level links lead to (scripts -> linux-kbuild-X.Y) and the
        one Debian's one-line Makefile stub includes."""
        found: list[Path] = []

        def add(p: Path) -> None:
            try:
                r = p.resolve()
            except OSError:
                return
            if r.is_dir() and r != Path("/") and r not in found:
                found.append(r)

        add(self.build_dir)
        if self.named is not None:
            add(self.named.parent / "source")
        try:
            for entry in sorted(self.build_dir.iterdir()):
                if entry.is_symlink():
                    add(entry if entry.is_dir() else entry.parent)
        except OSError:
            pass
        include = _makefile_include(self.build_dir)
        if include is not None:
            add(include.parent)
        tops = [p for p in found if not any(q in p.parents for q in found)]
        return tuple(tops)

    @property
    def makefile_include(self) -> Path | None:
        """The Makefile Debian's one-line ``include <common>/Makefile`` stub names, if so."""
        return _makefile_include(self.build_dir)

    @functools.cached_property
    def split_source(self) -> Path | None:
        """The source tree of a split build tree (resolved): the dir Debian's Makefile stub
        includes from, else /lib/modules/KVER/source when it is another dir; None when the
        build tree is the source tree too."""
        include = self.makefile_include
        candidates = [include.parent] if include is not None else []
        if self.named is not None:
            candidates.append(self.named.parent / "source")
        own = self.build_dir.resolve()
        for c in candidates:
            try:
                r = c.resolve()
            except OSError:
                continue
            if r.is_dir() and r != own:
                return r
        return None

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
        """ "thin", "full" or "none": how modules are linked. Distributed ThinLTO (7.x
        CONFIG_LTO_CLANG_THIN_DIST) is "thin": it runs the ThinLTO backends of vmlinux
        itself, but a module's link (Makefile.modfinal's ld -r) is in-process ThinLTO,
        as with CONFIG_LTO_CLANG_THIN."""
        if "y" in (
            self.config.get("CONFIG_LTO_CLANG_THIN"),
            self.config.get("CONFIG_LTO_CLANG_THIN_DIST"),
        ):
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
                f"(run 'make modules_prepare' in it, or install the headers package)"
            )

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


def _makefile_include(build_dir: Path) -> Path | None:
    """The Makefile Debian's one-line ``include <common>/Makefile`` stub names, if so."""
    try:
        text = (build_dir / "Makefile").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.fullmatch(r"\s*include\s+(\S+/Makefile)\s*", text)
    return Path(m.group(1)) if m else None


def _top_makefile_text(build_dir: Path) -> str:
    """The top Makefile, following Debian's one-line ``include <common>/Makefile`` stub."""
    include = _makefile_include(build_dir)
    for f in ((include,) if include else ()) + (build_dir / "Makefile",):
        try:
            return f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
    return ""


def load(build_dir: Path, named: Path | None = None) -> Kernel:
    """Read a kernel build tree. Raises KernelError if it is not a kernel tree at all.
    ``named``: the path it was named by, if not ``build_dir`` (a /lib/modules link)."""
    if not build_dir.is_dir():
        raise KernelError(f"no kernel build tree at {build_dir}")
    missing = next((f for f in PREPARED_FILES if not (build_dir / f).exists()), None)
    config_file = build_dir / "include/config/auto.conf"
    if not config_file.exists():
        config_file = build_dir / ".config"
    if not config_file.exists():
        raise KernelError(
            f"{build_dir} is not a configured kernel tree: "
            f"include/config/auto.conf and .config are missing"
        )
    try:
        config = read_config(config_file)
    except OSError as e:
        raise KernelError(f"{config_file}: cannot read: {e.strerror}") from None
    release = _release(build_dir)
    return Kernel(
        release=release,
        build_dir=build_dir,
        config=config,
        config_file=config_file,
        missing=missing,
        named=named,
    )


def _release(build_dir: Path) -> str:
    """UTS_RELEASE, which modules carry in their vermagic. Debian's headers have the
    upstream version in include/config/kernel.release (6.1.192) but the ABI release
    (6.1.0-56-amd64) in utsrelease.h."""
    try:
        m = re.search(
            r'UTS_RELEASE\s+"([^"]+)"', (build_dir / "include/generated/utsrelease.h").read_text()
        )
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        return (build_dir / "include/config/kernel.release").read_text().strip()
    except OSError:
        return build_dir.name


def by_release(paths: Paths, kver: str) -> Kernel:
    if why := release_problem(kver):
        raise KernelError(f"invalid kernel release {kver!r}: {why}")
    link = paths.kernels_dir / kver / "build"
    if not link.exists():
        raise KernelError(
            f"no kernel {kver}: {link} does not exist "
            f"({hints.install(f'linux-headers-{kver}', os_release=paths.os_release)})"
        )
    return load(paths.in_root(link), named=link)


def find_all(paths: Paths) -> list[Kernel | KernelError]:
    """Every kernel under the root with a build tree, newest release last."""
    found: list[Kernel | KernelError] = []
    if not paths.kernels_dir.is_dir():
        return found
    for link in sorted(paths.kernels_dir.glob("*/build")):
        try:
            found.append(load(paths.in_root(link), named=link))
        except KernelError as e:
            found.append(e)
    return found


def usable(paths: Paths) -> list[Kernel]:
    """Every kernel under /lib/modules whose tree can be used (find_all without the
    unusable ones)."""
    return [k for k in find_all(paths) if isinstance(k, Kernel)]
