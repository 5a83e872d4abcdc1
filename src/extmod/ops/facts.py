"""What a build of a package for a kernel depends on, looked up once per command: the
kernel's toolchain, its signer, a source tree's digest, a package's dkms.conf as read for
the kernel, and how big a build is likely to be. Shared by the threads of one command."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from extmod.builder import build
from extmod.builder.inputs import inputs_digest, places_of, read_environment
from extmod.core import digest, files, run
from extmod.core.config import Config
from extmod.core.paths import Paths
from extmod.kernel import signing, toolchain
from extmod.kernel.kernel import Kernel
from extmod.kernel.signing import Signer
from extmod.source import package
from extmod.store.state import Added, State, newest


@dataclass
class Facts:
    config: Config
    paths: Paths
    state: State
    build_user: run.RunAs | None = None
    force: bool = False  # --force: dkms.conf is read again, not taken from the memo
    versions: toolchain.VersionMemo = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sources: dict[Path, str] = field(default_factory=dict)
    _weights: dict[Path, float] = field(default_factory=dict)
    _resolved: dict[Path, toolchain.Resolved] = field(default_factory=dict)
    _signers: dict[Path, tuple[Signer | None, str | None]] = field(default_factory=dict)
    _environment: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.versions = toolchain.VersionMemo(self.paths.compilers_memo)

    def weight(self, added: Added) -> float:
        """How big a build is likely to be: the bytes of its C sources."""
        with self._lock:
            if added.source in self._weights:
                return self._weights[added.source]
        total = 0
        for rel, path, link in files.tree_entries(added.source):
            if link is None and rel.endswith((".c", ".h")):
                try:
                    total += path.stat().st_size
                except OSError:
                    pass
        with self._lock:
            self._weights[added.source] = float(total)
        return float(total)

    def source_digest(self, added: Added) -> str:
        with self._lock:
            if added.source not in self._sources:
                index = self.state.package_dir(added.name, added.version) / "source-index.json"
                self._sources[added.source] = digest.tree(added.source, index)
            return self._sources[added.source]

    def load(self, added: Added, kernel: Kernel) -> package.Package:
        """dkms.conf for this kernel; the kept evaluation is reused unless --force."""
        return build.load_package(
            added,
            kernel,
            self.paths,
            self.config,
            None if self.force else self.source_digest(added),
            self.build_user,
        )

    def signing(self, kernel: Kernel) -> tuple[Signer | None, str | None]:
        """signing.signer once per kernel per command (it runs openssl to check the key):
        the key is made if needed; a missing or protected key is a UserError here."""
        with self._lock:
            if kernel.build_dir not in self._signers:
                self._signers[kernel.build_dir] = signing.signer(kernel, self.config, self.paths)
            return self._signers[kernel.build_dir]

    def signer(self, kernel: Kernel) -> Signer | None:
        return self.signing(kernel)[0]

    def toolchain(self, kernel: Kernel) -> toolchain.Resolved:
        with self._lock:
            key = kernel.build_dir
            if key not in self._resolved:
                self._resolved[key] = toolchain.resolve(
                    toolchain.from_kernel(kernel), kernel, memo=self.versions
                )
            return self._resolved[key]

    def inputs(self, added: Added, kernel: Kernel, pkg: package.Package) -> str:
        """The inputs digest a build of ``pkg`` for ``kernel`` would have now."""
        resolved = self.toolchain(kernel)
        sign = self.signer(kernel)
        return inputs_digest(
            pkg,
            kernel,
            resolved,
            sign,
            self.source_digest(added),
            self.environment(),
            self.dependency_builds(pkg, kernel),
            places_of(kernel, self.paths),
        )

    def dependency_builds(self, pkg: package.Package, kernel: Kernel) -> tuple[str, ...]:
        """The builds of the package's BUILD_DEPENDS for this kernel, by their inputs: a
        dependency built anew makes its dependants' builds stale (DKMS 3.2's
        BUILD_DEPENDS_REBUILD, always here: a module built against another's symbols is
        built again when that one changes)."""
        out = []
        for dep in pkg.build_depends:
            versions = self.state.versions_of(dep)
            b = (
                self.state.find_built(dep, newest(versions).version, kernel.release, kernel.arch)
                if versions
                else None
            )
            out.append(f"{dep}={b.record.inputs if b is not None else '-'}")
        return tuple(out)

    def environment(self) -> dict[str, str]:
        """[build] environment's variables, read once per command."""
        with self._lock:
            if self._environment is None:
                self._environment = read_environment(self.config.build_environment)
            return self._environment
