"""The target kernel's compiler and linker, as data; found on this machine; make variables.

A kernel built by clang must get its modules built by the same clang: gcc dies on clang-only
flags (``gcc: error: unrecognized command-line option '-Qunused-arguments'``) and kbuild only
warns that "the compiler differs". Debian installs LLVM under versioned names (clang-16,
ld.lld-16) and /usr/lib/llvm-16/bin, so a bare ``clang`` is often not there at all.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from extmod.core import atomic, files, hints, run
from extmod.core.config import Config
from extmod.core.errors import ToolchainError, UserError
from extmod.core.paths import Paths
from extmod.core.settings import MAX_JOBS
from extmod.kernel.kernel import Kernel

# The LLVM binaries kbuild runs for an external module build of an LLVM=1 kernel.
_LLVM_TOOLS = ("clang", "ld.lld", "llvm-ar", "llvm-nm", "llvm-objcopy", "llvm-strip")
# kbuild make variable for each (used below Linux 5.18, which lacks LLVM=-N / LLVM=<prefix>).
_LLVM_MAKE_VARS = {
    "clang": "CC",
    "ld.lld": "LD",
    "llvm-ar": "AR",
    "llvm-nm": "NM",
    "llvm-objcopy": "OBJCOPY",
    "llvm-strip": "STRIP",
}


@dataclass(frozen=True)
class Toolchain:
    """What the kernel was built with, read from its config."""

    compiler: str  # "gcc" or "clang"
    version: tuple[int, int, int]
    version_text: str  # CONFIG_CC_VERSION_TEXT
    linker: str  # "lld" or "bfd"
    lto: str  # "thin", "full" or "none"

    @property
    def major(self) -> int:
        return self.version[0]

    @property
    def llvm(self) -> bool:
        return self.compiler == "clang" and self.linker == "lld"

    def describe(self) -> str:
        return f"{self.compiler}-{self.major}"

    def package_for(self, binary: str) -> str:
        """The Debian package providing a versioned binary of this toolchain."""
        if self.compiler == "gcc":
            return f"gcc-{self.major}"
        if binary.startswith("clang"):
            return f"clang-{self.major}"
        if binary.startswith("ld.lld"):
            return f"lld-{self.major}"
        return f"llvm-{self.major}"


@dataclass(frozen=True)
class Resolved:
    """A toolchain found on this machine: the binaries and the make variables to use them."""

    toolchain: Toolchain
    cc: str  # absolute path of the compiler
    ld: str | None  # absolute path of ld.lld for LLVM toolchains, else None
    strip: str  # the strip to use on built modules (llvm-strip for LLVM kernels)
    make_vars: tuple[tuple[str, str], ...]
    version_line: str  # first line of `cc --version`

    def make_args(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.make_vars]

    @property
    def cc_name(self) -> str:
        """The compiler as a package's own build system is given it (``CC``): its name when
        PATH finds this very binary by it (``gcc-12``, ``clang-16``), else its path."""
        name = Path(self.cc).name
        return name if shutil.which(name, path=run.scrubbed_env()["PATH"]) == self.cc else self.cc


def from_kernel(kernel: Kernel) -> Toolchain:
    cfg = kernel.config
    if cfg.get("CONFIG_CC_IS_CLANG") == "y":
        compiler, code = "clang", cfg.get("CONFIG_CLANG_VERSION", "0")
    elif cfg.get("CONFIG_CC_IS_GCC") == "y":
        compiler, code = "gcc", cfg.get("CONFIG_GCC_VERSION", "0")
    else:
        raise UserError(
            f"{kernel.config_file}: CONFIG_CC_IS_GCC/CONFIG_CC_IS_CLANG missing: "
            f"cannot tell which compiler built this kernel"
        )
    if not code.isdigit() or int(code) == 0:
        raise UserError(
            f"{kernel.config_file}: CONFIG_{compiler.upper()}_VERSION: "
            f"expected a number like 160006, got {code!r}"
        )
    n = int(code)  # 160006 -> 16.0.6, 120200 -> 12.2.0
    return Toolchain(
        compiler=compiler,
        version=(n // 10000, n // 100 % 100, n % 100),
        version_text=cfg.get("CONFIG_CC_VERSION_TEXT", ""),
        linker="lld" if cfg.get("CONFIG_LD_IS_LLD") == "y" else "bfd",
        lto=kernel.lto,
    )


class VersionMemo:
    """First lines of ``BINARY --version``, kept in a file keyed by the binary's stat: a
    compiler upgrade changes its size or mtime and is asked again; an unchanged one is not
    (clang takes ~50 ms to answer, which a no-op autoinstall should not pay per kernel)."""

    def __init__(self, file: Path | None = None):
        self.file = file
        self._lock = threading.Lock()
        self._dirty = False
        self._lines: dict[str, list[object]] = {}
        if file is not None:
            kept = files.read_cache(file)
            if isinstance(kept, dict):
                self._lines = {k: v for k, v in kept.items() if isinstance(v, list) and len(v) == 4}

    def first_line(self, binary: str) -> str:
        try:
            st = os.stat(binary)
            key: list[object] = [st.st_size, st.st_mtime_ns, st.st_ino]
        except OSError:
            key = []
        with self._lock:
            hit = self._lines.get(binary)
            if key and hit is not None and hit[:3] == key:
                return str(hit[3])
        try:
            line = run.capture([binary, "--version"]).splitlines()[0].strip()
        except (run.CommandFailed, IndexError):
            return binary
        with self._lock:
            if key:
                self._lines[binary] = [*key, line]
                self._dirty = True
        return line

    def save(self) -> None:
        with self._lock:
            if self.file is None or not self._dirty:
                return
            try:
                atomic.write_text(self.file, json.dumps(self._lines, sort_keys=True))
                self._dirty = False
            except OSError:
                pass  # only a cache


def _version_major(binary: str, memo: VersionMemo) -> int | None:
    try:
        out = memo.first_line(binary)
    except ToolchainError:
        return None
    m = re.search(r"version (\d+)\.", out) or re.search(r"\) (\d+)\.", out)
    return int(m.group(1)) if m else None


def resolve(
    tc: Toolchain, kernel: Kernel, path: str | None = None, memo: VersionMemo | None = None
) -> Resolved:
    """Find ``tc`` on this machine, or raise ToolchainError naming the binary and package."""
    memo = memo or VersionMemo()
    if tc.compiler == "gcc":
        return _resolve_gcc(tc, path, memo)
    return _resolve_clang(tc, kernel, path, memo)


def named_compiler(tc: Toolchain) -> str | None:
    """The compiler binary the kernel's CONFIG_CC_VERSION_TEXT names, when it names one:
    Debian's 6.12 kernels were built by ``x86_64-linux-gnu-gcc-12``, 6.1's by ``gcc-12``
    (clang's text begins with a vendor, "Debian clang version ..."). DKMS 3.0.10's
    prepare_build exports CC from the same first word when that command exists."""
    first = tc.version_text.split(" ", 1)[0]
    if tc.compiler == "gcc" and re.fullmatch(r"[A-Za-z0-9_.+-]*gcc(?:-\d+)?", first):
        return first
    return None


def _resolve_gcc(tc: Toolchain, path: str | None, memo: VersionMemo) -> Resolved:
    versioned = f"gcc-{tc.major}"
    named = named_compiler(tc)
    cc = shutil.which(named, path=path) if named else None
    if cc is not None and _version_major(cc, memo) != tc.major:
        cc = None
    if cc is None:
        cc = shutil.which(versioned, path=path)
    if cc is None:
        plain = shutil.which("gcc", path=path)
        if plain and _version_major(plain, memo) == tc.major:
            cc = plain
    if cc is None:
        raise ToolchainError(f"{versioned} not found: {hints.install(versioned)}")
    return Resolved(
        toolchain=tc,
        cc=cc,
        ld=None,
        strip=shutil.which("strip", path=path) or "strip",
        make_vars=(("CC", Path(cc).name),),
        version_line=memo.first_line(cc),
    )


def _resolve_clang(tc: Toolchain, kernel: Kernel, path: str | None, memo: VersionMemo) -> Resolved:
    n = tc.major
    tools = _LLVM_TOOLS if tc.linker == "lld" else ("clang",)
    # 1. Debian's versioned names on PATH: clang-16, ld.lld-16, ...
    versioned = {t: shutil.which(f"{t}-{n}", path=path) for t in tools}
    # 2. The per-version prefix dir Debian and apt.llvm.org use.
    prefix = Path(f"/usr/lib/llvm-{n}/bin")
    prefixed = {t: str(prefix / t) if (prefix / t).exists() else None for t in tools}
    # 3. Unversioned names, if they are this major version.
    plain = {t: shutil.which(t, path=path) for t in tools}
    if plain["clang"] and _version_major(plain["clang"], memo) != n:
        plain = {t: None for t in tools}

    found: dict[str, str] | None = None
    llvm_value = ""
    for candidate, value in ((versioned, f"-{n}"), (prefixed, f"{prefix}/"), (plain, "1")):
        if all(candidate.values()):
            found = {t: str(p) for t, p in candidate.items()}
            llvm_value = value
            break
    if found is None:
        missing = next(f"{t}-{n}" for t in tools if not versioned[t])
        raise ToolchainError(f"{missing} not found: {hints.install(tc.package_for(missing))}")

    if tc.linker != "lld":
        make_vars: tuple[tuple[str, str], ...] = (("CC", found["clang"]),)
    elif kernel.version >= (5, 18) or llvm_value == "1":
        # LLVM=-N and LLVM=<prefix>/ arrived in Linux 5.18 ("kbuild: Make $(LLVM) more
        # flexible"); below it, LLVM=1 plus every tool spelled out.
        make_vars = (("LLVM", llvm_value),)
    else:
        make_vars = (("LLVM", "1"), *tuple((_LLVM_MAKE_VARS[t], found[t]) for t in tools))
    return Resolved(
        toolchain=tc,
        cc=found["clang"],
        ld=found.get("ld.lld"),
        strip=found.get("llvm-strip", "strip"),
        make_vars=make_vars,
        version_line=memo.first_line(found["clang"]),
    )


def installed(tc: Toolchain, kernel: Kernel) -> str:
    """'yes' or the one-line reason why not, for `extmod kernels`."""
    try:
        resolve(tc, kernel)
    except ToolchainError as e:
        return f"no: {e}"
    return "yes"


# The launchers extmod knows by name: the Debian package that brings each, and the prefix of
# the environment variables it reads (passed on to the build; the rest is scrubbed).
_LAUNCHERS = {
    "ccache": ("ccache", "CCACHE_"),
    "sccache": ("sccache", "SCCACHE_"),
    "distcc": ("distcc", "DISTCC_"),
    "icecc": ("icecc", "ICECC_"),
}


@dataclass(frozen=True)
class Launcher:
    """``[build] launcher``: what goes before the compiler, and its environment."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    @property
    def distributed(self) -> bool:
        return Path(self.argv[0]).name in ("distcc", "icecc")

    def slots(self) -> int | None:
        """The compiles that can run at once where this launcher sends them: distcc's own
        count from DISTCC_HOSTS (``distcc -j``); None when it cannot tell."""
        if Path(self.argv[0]).name != "distcc":
            return None
        try:
            out = run.query([self.argv[0], "-j"], timeout=30, env=dict(self.env)).stdout
            return int(out.decode().strip() or 0) or None
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None

    def wrap(self, cc: str) -> str:
        """The CC a make gets: ``ccache gcc-12``."""
        return shlex.join([*self.argv, cc])

    def make_args(self, resolved: Resolved) -> list[str]:
        """The toolchain's make variables with CC wrapped (added next to LLVM=-N)."""
        args = [a for a in resolved.make_args() if not a.startswith("CC=")]
        return [*args, f"CC={self.wrap(resolved.cc_name)}"]


# Where each caching launcher is told of a shared cache, and the URL schemes it takes.
_REMOTE = {
    "ccache": ("CCACHE_REMOTE_STORAGE", ("redis://", "redis+unix://", "http://", "https://")),
    "sccache": ("SCCACHE_REDIS", ("redis://",)),
}


def configured_launcher(config: Config, paths: Paths) -> Launcher | None:
    """[build] launcher, found on PATH; ccache's own dir beside the ThinLTO caches."""
    return launcher(config.build_launcher, paths.default_cache_dir.parent, config.build_cache_url)


def launcher(text: str | None, cache_home: Path, cache_url: str | None = None) -> Launcher | None:
    """The launcher a setting names, found on PATH (a ToolchainError naming the package
    otherwise). ``cache_home``: where ccache keeps its cache unless CCACHE_DIR is set;
    ``cache_url``: the cache shared by hosts (build.cache_url)."""
    if not text:
        if cache_url:
            raise UserError("build.cache_url: needs build.launcher = ccache or sccache")
        return None
    argv = shlex.split(text)
    name = Path(argv[0]).name
    package, prefix = _LAUNCHERS.get(name, (name, ""))
    found = shutil.which(argv[0], path=run.scrubbed_env()["PATH"])
    if found is None:
        raise ToolchainError(f"build.launcher: {argv[0]} not found: {hints.install(package)}")
    env = {k: v for k, v in os.environ.items() if prefix and k.startswith(prefix)}
    if name == "ccache":
        env.setdefault("CCACHE_DIR", str(cache_home / "ccache"))
    if cache_url:
        variable, schemes = _REMOTE.get(name, ("", ()))
        if not variable:
            raise UserError(f"build.cache_url: {name} keeps no shared cache: use ccache or sccache")
        if not cache_url.startswith(schemes):
            raise UserError(
                f"build.cache_url: {cache_url!r}: {name} takes {', '.join(schemes)} URLs"
            )
        env[variable] = cache_url
    shown = argv[0] if "/" in argv[0] else name  # as the reproducer says it; PATH finds it
    return Launcher((shown, *argv[1:]), tuple(sorted(env.items())))


def job_slots(configured: int, launch: Launcher | None) -> int:
    """The job budget: build.jobs when set; else this machine's CPUs, or, with a
    distributing launcher, the remote slots when there are more (distcc -j); never more
    than config.MAX_JOBS (the jobserver's pipe is filled before any make reads it)."""
    if configured:
        return min(configured, MAX_JOBS)
    local = os.cpu_count() or 1
    remote = launch.slots() if launch is not None and launch.distributed else None
    return min(max(local, remote or 0), MAX_JOBS)
