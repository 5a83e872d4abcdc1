"""Every system path extmod touches, under one root (``--root`` for staging and tests)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path
    state_dir: Path  # the state tree (docs/reference/files.md): packages, installs, build dirs
    default_cache_dir: Path  # base of the ThinLTO cache when no setting names one
    config_file: Path
    install_tree: Path | None = None  # DKMS's --installtree: where modules are installed
    source_dir: Path | None = None  # DKMS's --sourcetree: where package sources live
    headers_in_install_tree: bool = False  # DKMS >= 3.1: KVER/build under --installtree

    @property
    def kernels_dir(self) -> Path:
        """Where each kernel's KVER/build (and KVER/source) link is: /lib/modules, as
        DKMS 3.0 finds it whatever its --installtree; DKMS 3.1 and later look under the
        install tree (dkms 3.2.2 ``_get_kernel_dir``: ``$install_tree/$KVER/build``)."""
        if self.headers_in_install_tree and self.install_tree is not None:
            return self.install_tree
        return self.root / "lib/modules"

    @property
    def modules_dir(self) -> Path:
        """Where modules are installed: KVER/updates/dkms/... and the depmod files."""
        return self.install_tree or self.kernels_dir

    @property
    def source_tree(self) -> Path:
        return self.source_dir or self.root / "usr/src"

    @property
    def dkms_records(self) -> Path:
        """DKMS's own tree, /var/lib/dkms (what import-dkms takes over)."""
        return self.root / "var/lib/dkms"

    @property
    def etc_dkms(self) -> Path:
        return self.root / "etc/dkms"

    @property
    def os_release(self) -> Path:
        return self.root / "etc/os-release"

    # -- every location under the state dir but the records (store/state.py's) -----------

    @property
    def builds_root(self) -> Path:
        """STATE/build: the kept build dirs, BUILD/NAME/VERSION/KVER."""
        return self.state_dir / "build"

    @property
    def build_store(self) -> Path:
        """STATE/store: finished builds by their inputs digest (store/builds.py)."""
        return self.state_dir / "store"

    @property
    def preflight_dir(self) -> Path:
        """STATE/preflight: kernels staged from header packages (ops/preflight.py)."""
        return self.state_dir / "preflight"

    @property
    def identify_tree(self) -> Path:
        """``$dkms_tree`` while a package is not yet known (its dkms.conf read to name it)."""
        return self.builds_root / ".identify"

    @property
    def keys_dir(self) -> Path:
        """The generated MOK pair, mok.key and mok.pub."""
        return self.state_dir / "keys"

    @property
    def compilers_memo(self) -> Path:
        """Compilers' ``--version`` first lines, keyed by the binary's stat."""
        return self.state_dir / "compilers.json"

    @property
    def view_root(self) -> Path:
        """Where a build's path view (builder/pathmap.py) is mounted."""
        return self.state_dir / "view"

    @property
    def kvm_memo(self) -> Path:
        """Remembers that KVM does not boot here (verify falls back to TCG)."""
        return self.state_dir / "verify" / "kvm-unusable"

    @property
    def binaries_only(self) -> Path:
        """The sources of binaries-only packages (dkms ldtarball), NAME-VERSION each."""
        return self.state_dir / "binaries-only"

    @property
    def post_transaction_log(self) -> Path:
        """The output of framework.conf's post_transaction command (dkms 3.2)."""
        return self.state_dir / "post_transaction.log"

    def dkms_imported(self, name: str) -> Path:
        """What import-dkms kept of DKMS's record of package NAME."""
        return self.state_dir / "dkms-imported" / name

    def work_dir(self, name: str, version: str, kver: str) -> Path:
        """Where one (package, version, kernel) is built: its kept build dir, where make
        runs and its objects stay for the next build (not the finished build: that is
        ``State.finished_dir``; nor the kernel's build tree, ``Kernel.build_dir``)."""
        return self.builds_root / name / version / kver

    def dkms_tree(self, package: str, version: str, kver: str | None) -> Path:
        """DKMS's ``$dkms_tree`` for one (package, kernel) build: its own, so two kernels
        of one package build at once (``$dkms_tree/NAME/VERSION/build`` is the build
        dir). Without a kernel (POST_ADD, POST_REMOVE): the package's dir of build dirs."""
        if kver is None:
            return self.builds_root / package / version
        return self.work_dir(package, version, kver) / "dkms"

    def output_dir(self, package: str, kver: str) -> Path:
        return self.state_dir / "modules" / kver / package

    def in_root(self, path: Path) -> Path:
        """Resolve ``path`` whose symlinks may hold absolute targets meant for the root."""
        if self.root == Path("/"):
            return path.resolve()
        resolved = self.root
        for part in path.relative_to(self.root).parts:
            nxt = resolved / part
            for _ in range(40):
                if not nxt.is_symlink():
                    break
                target = Path(os.readlink(nxt))
                nxt = (
                    (self.root / target.relative_to("/"))
                    if target.is_absolute()
                    else nxt.parent / target
                )
            resolved = Path(os.path.normpath(nxt))
        return resolved


# The kernel's __NEW_UTS_LEN: `uname -r` never gives more.
MAX_RELEASE = 64


def release_problem(kver: str) -> str:
    """Why ``kver`` cannot be a kernel release (it names a dir under /lib/modules, the
    state tree and the caches), or "" when it can."""
    if not kver or kver in (".", ".."):
        return "not a kernel release"
    if len(kver.encode()) > MAX_RELEASE:
        return f"{len(kver.encode())} bytes: a kernel release has at most {MAX_RELEASE}"
    if any(c == "/" or not c.isprintable() or c.isspace() for c in kver):
        return "a kernel release has no '/', blank or control character"
    return ""


def root_of(environ: Mapping[str, str]) -> Path | None:
    """``EXTMOD_ROOT``: the root a staged system's hooks run extmod and dkms in (None: /)."""
    value = environ.get("EXTMOD_ROOT")
    return Path(value) if value else None


def default_cache_dir(state_dir: Path) -> Path:
    """The ThinLTO cache's base under a state dir (root's, or a dkms_tree's)."""
    return state_dir / "thinlto-cache"


def for_invocation(root: Path | None, environ: Mapping[str, str], euid: int) -> Paths:
    """As root, or with ``--root``: system paths. As a user without ``--root``: XDG dirs."""
    home = Path(environ.get("HOME") or "~").expanduser()
    xdg_cache = Path(environ.get("XDG_CACHE_HOME") or home / ".cache") / "extmod"
    base = Path("/") if root is None else root.absolute()
    if root is not None or euid == 0:
        state = base / "var/lib/extmod"
    else:
        state = Path(environ.get("XDG_STATE_HOME") or home / ".local/state") / "extmod"
    cache = default_cache_dir(state) if euid == 0 else xdg_cache / "thinlto"
    return Paths(
        root=base,
        state_dir=state,
        default_cache_dir=cache,
        config_file=base / "etc/extmod/config.toml",
    )
