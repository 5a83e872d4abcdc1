"""The commands, one entry per verb, for both command lines (issue 24).

A command line parses its arguments into an entry's inputs (a ``Request``, a ``Kernels``)
and renders what the entry returns; everything between is here: kernel discovery (``-k``,
``--kernel-dir``, ``--all``, else the running kernel), the hook rules (a kernel image whose
headers are not there yet builds nothing), and the bracket every lifecycle verb runs in,
``bracket``: finish what an interrupted extmod left, act, depmod once for each kernel whose
modules changed, and after an autoinstall (``autoinstall``, ``kernel-postinst``, and the
same two actions of ``dkms``) ``[verify] after_install``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from extmod.builder import adhoc, build, builddir
from extmod.core import run as run_mod
from extmod.core import verbs
from extmod.core.config import Config
from extmod.core.errors import ExtmodError, KernelError, UserError
from extmod.core.paths import Paths
from extmod.kernel import kernel, signing, thinlto, toolchain
from extmod.kernel.finish import module_stem
from extmod.kernel.kernel import Kernel
from extmod.ops import caches, export, freshness, initramfs, installer, migrate, plan, registry
from extmod.ops import preflight as preflight_mod
from extmod.ops import verify as verify_mod
from extmod.ops.session import Session, running_release
from extmod.store import builds, dkmsview, status
from extmod.store.state import Added, Installed, State, newest

T = TypeVar("T")
DkmsRow = status.DkmsRow  # what dkms_status gives, for the doors to word

# The verbs (both doors' names, core/verbs.py) after which [verify] after_install boots the
# kernels that got new modules.
VERIFY_AFTER = verbs.names(verify_after=True)
# The verbs after which the kernel's own initramfs hook runs (postinst.d, in name order:
# extmod's dkms before initramfs-tools): they leave the initramfs to it.
OWN_INITRAMFS_HOOK = verbs.names(own_initramfs_hook=True)


# -- which kernels ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Kernels:
    """The kernels a verb acts on: the releases named (``-k``), a tree (``--kernel-dir``),
    every kernel the package has (``--all``), else the running kernel."""

    releases: tuple[str, ...] = ()
    tree: Path | None = None
    every: bool = False


def running(p: Paths) -> str:
    kver = running_release()
    if not (p.kernels_dir / kver / "build").exists():
        raise KernelError(
            f"the running kernel {kver} has no build tree under "
            f"{p.kernels_dir}: name one with -k KVER"
        )
    return kver


def chosen(p: Paths, which: Kernels) -> list[Kernel] | None:
    """The kernels of ``which``; None for ``--all``."""
    if which.every:
        return None
    if which.tree is not None:
        return [kernel.load(which.tree.absolute())]
    return [kernel.by_release(p, k) for k in (which.releases or (running(p),))]


def installed(p: Paths) -> list[Kernel]:
    """Every kernel with a usable build tree under /lib/modules (unusable ones left out)."""
    return kernel.usable(p)


# -- the bracket -----------------------------------------------------------------------------
def bracket(s: Session, verb: str, action: Callable[[], T], depmod: list[str]) -> T:
    """Run ``action`` as a lifecycle verb: what an interrupted extmod left is finished or
    rolled back first; depmod runs once per touched kernel at the end, even when the action
    fails (the kernels go into ``depmod``, for the caller to say); after an autoinstall,
    ``[verify] after_install``."""
    # Every install record is read first: a damaged one is refused (by file and field)
    # before the verb changes anything, and after_install compares with it.
    after = verb in VERIFY_AFTER
    before = {(r.kver, r.name): r for r in s.state.all_installed(None)}
    try:
        installer.recover(s)
        result = action()
    finally:
        depmod += installer.run_depmod(s)
        if verb not in OWN_INITRAMFS_HOOK:
            initramfs.follow(s, _touched(s, before, depmod))
        _dkms_view(s)
    if after:
        verify_mod.after_install(s, before)
        depmod += installer.run_depmod(s)
    return result


def _dkms_view(s: Session) -> None:
    """/var/lib/dkms made again from the state (store/dkmsview.py): a view, so a failure is
    said and costs the command nothing."""
    try:
        dkmsview.sync(s.paths)
    except OSError as e:
        s.note(f"{s.paths.dkms_records}: the view of extmod's state not made again: {e}")


def _touched(
    s: Session, before: dict[tuple[str, str], Installed], kvers: list[str]
) -> dict[str, set[str]]:
    """KVER -> the stems of the modules installed, replaced or removed for it since
    ``before``, for the kernels depmod ran for."""
    now = {(r.kver, r.name): r for r in s.state.all_installed(None)}
    touched: dict[str, set[str]] = {}
    for key in before.keys() | now.keys():
        old, new = before.get(key), now.get(key)
        if old == new or key[0] not in kvers:
            continue
        for rec in (old, new):
            for f in rec.files if rec else ():
                stem = module_stem(Path(f.path).name)
                if stem:
                    touched.setdefault(key[0], set()).add(stem)
    return touched


# -- the lifecycle verbs ---------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """A lifecycle verb and what it acts on."""

    verb: str
    targets: tuple[str, ...] = ()  # SRC_DIR, NAME or NAME/VERSION
    kernels: Kernels = Kernels()
    kver: str = ""  # the kernel hooks' KVER
    export_format: str = ""
    output: Path | None = None
    keep_dkms: bool = False


def run(s: Session, req: Request) -> list[str]:
    """The verb, in its bracket; the kernels depmod ran for."""
    depmod: list[str] = []
    bracket(s, req.verb, lambda: _ACTIONS[req.verb](s, req), depmod)
    return depmod


def _build_or_install(s: Session, req: Request) -> None:
    kernels = chosen(s.paths, req.kernels) or []
    target = req.targets[0]
    plan.check_ready(s, target, kernels)
    added = registry.resolve(s, target)[-1]
    verb = freshness.build_if_needed if req.verb == "build" else installer.install_pair
    if len(kernels) == 1:
        with s.job(added, kernels[0]):
            verb(s, added, kernels[0], None)  # its error is the command's error
    else:
        plan.run_pairs(s, [(added, k, None) for k in kernels], lambda a, k, p: verb(s, a, k, p))


def _take_out(s: Session, req: Request) -> None:
    """uninstall, unbuild, remove."""
    picked = chosen(s.paths, req.kernels)
    kvers = None if picked is None else [k.release for k in picked]
    installer.take_out(s, req.verb, list(req.targets), kvers)


def _autoinstall(s: Session, req: Request) -> None:
    """autoinstall, kernel-postinst."""
    p = s.paths
    if req.verb == "kernel-postinst" and not (p.kernels_dir / req.kver / "build").exists():
        # A kernel image installed before its headers: their own postinst runs the
        # hook again (header_postinst.d, pacman's headers trigger).
        s.note(
            f"{req.kver}: no headers yet ({p.kernels_dir / req.kver / 'build'}): "
            f"nothing built; the modules are built when the headers are installed"
        )
        return
    releases = (req.kver,) if req.verb == "kernel-postinst" else req.kernels.releases
    kernels = [kernel.by_release(p, r) for r in releases] if releases else installed(p)
    plan.autoinstall(s, kernels)


def _add(s: Session, req: Request) -> None:
    registry.add(s, req.targets[0])


def _export(s: Session, req: Request) -> None:
    assert req.output is not None
    kernels = chosen(s.paths, req.kernels) or []  # a bad -k is refused before any add
    added = registry.resolve(s, req.targets[0])
    for k in kernels:
        export.export(s, newest(added), k, req.export_format, req.output.absolute())


_ACTIONS: dict[str, Callable[[Session, Request], None]] = {
    "export": _export,
    "import-dkms": lambda s, r: migrate.apply(s, migrate.plan(s), keep_dkms=r.keep_dkms),
    "add": lambda s, r: _add(s, r),
    "build": _build_or_install,
    "install": _build_or_install,
    "uninstall": _take_out,
    "unbuild": _take_out,
    "remove": _take_out,
    "autoinstall": _autoinstall,
    "kernel-postinst": _autoinstall,
    "kernel-preinst": lambda s, r: installer.prepare_kernel(s, r.kver),
    "kernel-prerm": lambda s, r: installer.forget_kernel(s, r.kver),
}
# The lifecycle verbs of the verb table, each with its action here (tests/house/test_verbs.py).
LIFECYCLE = verbs.extmod_names(lifecycle=True)


def verify(
    s: Session, releases: list[str], targets: list[str], image: Path | None
) -> list[verify_mod.KernelReport]:
    """``verify``: the kernels named, else every kernel something is installed for."""
    kvers = releases or sorted({r.kver for r in s.state.all_installed(None)})
    if image and len(kvers) != 1:
        raise UserError("--image: name the one kernel it is with -k KVER")
    return verify_mod.verify(s, [kernel.by_release(s.paths, k) for k in kvers], targets, image)


# -- what is here ----------------------------------------------------------------------------
def status_rows(p: Paths, target: str | None, kver: str | None) -> list[status.StatusRow]:
    return status.rows(State(p), target, kver)


def dkms_status(
    p: Paths, module: str | None, version: str | None, pairs: list[tuple[str, str]]
) -> list[tuple[Added, list[status.DkmsRow]]]:
    """``dkms status``: for each (kernel, arch) of ``pairs`` ("": any), every added
    package (of ``module``/``version`` if given) in DKMS's order, with its builds there."""
    state = State(p)
    added = sorted(state.all_added(), key=lambda x: (x.name.encode(), x.version.encode()))
    return [
        (a, status.dkms_rows(state, a, kver, arch))
        for kver, arch in pairs
        for a in added
        if not (module and a.name != module) and not (version and a.version != version)
    ]


def generate_mok(cfg: Config, p: Paths) -> tuple[Path, Path, bool]:
    """The signing key pair (``dkms generate_mok``): (key, certificate, made now)."""
    key, cert = signing.key_pair(cfg, p)
    if key.exists() and cert.exists():
        return key, cert, False
    signing.ensure_key_pair(key, cert)
    return key, cert, True


def kernel_rows(p: Paths, extra: list[Path]) -> list[dict[str, Any]]:
    """``kernels``: every kernel under /lib/modules and each tree of ``extra``, with its
    toolchain and whether it is installed; an unusable one as its error."""
    found: list[Kernel | ExtmodError] = list(kernel.find_all(p))
    for d in extra:
        try:
            found.append(kernel.load(d.absolute()))
        except ExtmodError as e:
            found.append(e)
    return [{"error": str(k)} if isinstance(k, ExtmodError) else _kernel_row(k) for k in found]


def _kernel_row(k: Kernel) -> dict[str, Any]:
    row: dict[str, Any] = {
        "release": k.release,
        "arch": k.arch,
        "build_dir": str(k.build_dir),
        "prepared": k.missing is None,
        "missing": k.missing,
        "lto": k.lto,
    }
    try:
        tc = toolchain.from_kernel(k)
        row |= {
            "compiler": tc.compiler,
            "compiler_version": ".".join(map(str, tc.version)),
            "linker": tc.linker,
            "toolchain_installed": toolchain.installed(tc, k),
        }
    except ExtmodError as e:
        row |= {"compiler": None, "toolchain_installed": f"no: {e}"}
    if k.lto == "thin":
        row["kbuild_thinlto_cache"] = k.kbuild_cache
    return row


# -- a bare kbuild dir, and the caches -------------------------------------------------------
def build_bare(
    cfg: Config,
    p: Paths,
    src: Path,
    name: str | None,
    which: Kernels,
    echo: bool,
    output: Path | None,
    say: Callable[[str], None],
) -> tuple[str, str, build.PackageResult]:
    """``build`` of a kbuild dir with no dkms.conf, for one kernel, outside the state:
    (the package's name, the kernel's release, the result)."""
    src = src.absolute()
    chosen_name = adhoc.package_name(src, name)
    if which.tree is not None:
        k = kernel.load(which.tree.absolute())
    elif len(which.releases) > 1:
        raise UserError("a bare kbuild dir is built for one kernel at a time: give one -k")
    else:
        k = kernel.by_release(p, which.releases[0] if which.releases else running(p))
    pkg = adhoc.adhoc_package(src, chosen_name, k, p, cfg)
    req = build.PackageRequest(
        Added(chosen_name, adhoc.ADHOC, src),
        k,
        echo=echo,
        package=pkg,
        out_dir=(output or p.output_dir(chosen_name, k.release)).absolute(),
    )
    return chosen_name, k.release, build.build_package(req, cfg, p, State(p), say)


def clean(cfg: Config, p: Paths, name: str | None, kver: str | None, every: bool) -> list[Path]:
    """``clean``: the kept build dirs and ThinLTO caches of a package and/or a kernel."""
    if not (name or kver or every):
        raise UserError("clean: name a package, a kernel (-k KVER), or --all")
    removed = builddir.clean(p, name, kver)
    for base in caches.thinlto_bases(cfg, p):
        removed += thinlto.remove(base, name, kver)
    if every:  # the store's objects are by digest, not by package or kernel
        removed += builds.clear(p)
    return removed


# -- what only the dkms command line asks for ------------------------------------------------
def to_build(s: Session, kver: str, arch: str) -> bool:
    """Whether an AUTOINSTALL package's newest version is neither installed nor built for
    the kernel: what DKMS 3.1.6's autoinstall prepares (looks for the headers of) a kernel
    for."""
    by_name: dict[str, list[Added]] = {}
    for a in s.state.all_added():
        by_name.setdefault(a.name, []).append(a)
    for versions in by_name.values():
        a = newest(versions)
        rec = s.state.find_installed(kver, arch, a.name)
        if (
            (rec is None or rec.version != a.version)
            and not s.state.find_built(a.name, a.version, kver, arch)
            and registry.autoinstalls_headerless(s, a, kver, arch)
        ):
            return True
    return False


def missing_depends(s: Session, added: Added, k: Kernel) -> list[str]:
    """The BUILD_DEPENDS of ``added`` (as read for ``k``) that no version of is installed
    for ``k``: DKMS 3.1.4's prepare_build refuses to build then (exit 13; --force warns)."""
    pkg = s.facts.load(added, k)
    return [d for d in pkg.build_depends if not s.state.find_installed(k.release, k.arch, d)]


def load_modules(s: Session, name: str, kver: str, arch: str) -> list[str]:
    """``dkms install --modprobe-on-install``: modprobe each module of ``name`` installed
    for ``kver``; one warning per module that did not load (an install is not undone)."""
    rec = s.state.find_installed(kver, arch, name)
    warnings = []
    for f in rec.files if rec else ():
        stem = module_stem(Path(f.path).name) or Path(f.path).name
        try:
            run_mod.capture([run_mod.system_tool("modprobe", "kmod"), stem])
        except (run_mod.CommandFailed, ExtmodError) as e:
            warnings.append(f"modprobe {stem} failed: {str(e).strip()[:200]}")
    return warnings


def post_transaction(command: str, log: Path) -> str | None:
    """framework.conf's post_transaction (DKMS 3.2.0): bash runs ``command`` with its
    output in ``log`` (emptied first); its failure is returned as one line, not raised."""
    # The log as DKMS 3.2's run_build_script writes it: a blank line, the date, the
    # command, its output, its exit code and time, a rule.
    started = time.monotonic()
    log.write_text(f"\n{time.strftime('%a %b %d %H:%M:%S %Z %Y')}\n# command: {command}\n")
    failure, code = None, 0
    try:
        run_mod.run_logged(["bash", "-c", command], log=log)
    except run_mod.CommandFailed as e:
        failure, code = f"post_transaction failed: {e} (see {log})", e.returncode
    except ExtmodError as e:
        failure, code = f"post_transaction failed: {e} (see {log})", 1
    took = int(time.monotonic() - started)
    with open(log, "a") as f:
        f.write(
            f"\n# exit code: {code}\n# elapsed time: "
            f"{took // 3600:02d}:{took // 60 % 60:02d}:{took % 60:02d}\n{'-' * 64}\n"
        )
    return failure


def replace_copy(s: Session, name: str, version: str, src: Path) -> bool:
    """``dkms add --force``: drop the copy of ``name``/``version`` under the source tree
    when it is not ``src`` itself, so the add copies ``src`` anew. True when dropped."""
    dest = s.paths.source_tree / f"{name}-{version}"
    if not dest.exists() or dest.resolve() == src.resolve():
        return False
    shutil.rmtree(dest)
    return True


# -- before a kernel comes: preflight, and apt's guard ---------------------------------------
def preflight(
    s: Session, debs: list[Path], candidates: bool, releases: tuple[str, ...], dirs: list[Path]
) -> list[preflight_mod.Row]:
    """``extmod preflight``: the kernels named (-k, --kernel-dir), in header packages
    (--deb), or coming with the next upgrade (--candidates), each AUTOINSTALL package built
    for them; nothing installed."""
    kernels = preflight_mod.kernels_of(s, releases, tuple(dirs))
    if debs:
        kernels += preflight_mod.stage(s, [d.absolute() for d in debs])
    if candidates:
        found = preflight_mod.candidates(s)
        if found:
            kernels += preflight_mod.stage(s, found)
        else:
            s.note("the candidate kernels' headers are all installed: nothing comes")
    if not kernels:
        if candidates:
            return []
        raise UserError("preflight: name the kernels: --deb FILE, --candidates, -k or --kernel-dir")
    with run_mod.path_first(preflight_mod.tool_path(kernels, s)):
        return bracket(s, "preflight", lambda: preflight_mod.check(s, kernels), [])


@dataclass(frozen=True)
class Guarded:
    rows: list[preflight_mod.Row]
    refused: list[preflight_mod.Row]  # critical packages that fail, when guard.mode refuses
    missing: list[preflight_mod.Row]  # the others that fail: warned about


def apt_guard(s: Session, text: str) -> Guarded:
    """What apt's DPkg::Pre-Install-Pkgs hook runs, with apt's list of what it is about
    to install on stdin (protocol version 3; 1 and 2 read too): the incoming kernel header
    packages are preflighted. [guard] mode = refuse refuses when a critical package fails."""
    debs = preflight_mod.incoming(text)
    if s.config.guard_mode == "off" or not debs:
        return Guarded([], [], [])
    try:
        rows = preflight(s, debs, False, (), [])
    except ExtmodError as e:
        # a guard that cannot check lets apt go on: an extmod problem never blocks a kernel
        s.note(f"the guard could not check the incoming kernel ({e}): apt goes on")
        return Guarded([], [], [])
    failed = [r for r in rows if r.verdict == "fails"]
    critical = set(s.config.guard_critical or ()) | (_in_initramfs(s) if failed else set())
    refused = [r for r in failed if r.package.split("/")[0] in critical]
    if s.config.guard_mode != "refuse":
        refused = []
    return Guarded(rows, refused, [r for r in failed if r not in refused])


def _in_initramfs(s: Session) -> set[str]:
    """The packages whose modules the running kernel's initramfs carries."""
    kver = running_release()
    img = initramfs.image(s.paths, kver)
    if img is None:
        return set()
    stems = set(initramfs.carried(s.paths, img))
    return {
        r.name
        for r in s.state.all_installed(kver)
        if any(module_stem(Path(f.path).name) in stems for f in r.files)
    }


# -- what the dkms command says about DKMS's tree (ui/dkms/words.py) -----------------------
InstalledRecord = Installed  # an install record, for the doors to word


@dataclass(frozen=True)
class SignedWith:
    """How a kernel's modules are signed, named as DKMS's messages name it: the view's
    /var/lib/dkms/mok.key where extmod signs with its own pair and the view shows it."""

    sign_file: Path
    key: Path
    cert: Path


def signed_with(s: Session, k: Kernel) -> SignedWith | str | None:
    """The kernel's signer, as DKMS names it; the sign-file that is missing (str); None:
    the kernel does not sign modules."""
    signer, why = signing.signer(k, s.config, s.paths)
    unresolved = s.paths.kernels_dir / k.release / "build/scripts/sign-file"  # DKMS's words
    sign_file = signing.for_kernel(s.config.sign_file, k.release) if s.config.sign_file else None
    if signer is None:
        if why and why.endswith("not found: modules are not signed"):
            return str(sign_file or unresolved)
        return None
    key, cert = signer.key, signer.cert
    if dkmsview.wanted(s.paths):
        view = s.paths.dkms_records
        own = signing.keys_dir(s.paths)
        key = view / "mok.key" if key == own / "mok.key" else key
        cert = view / "mok.pub" if cert == own / "mok.pub" else cert
    return SignedWith(sign_file or unresolved, key, cert)


def dkms_tree_view(s: Session) -> Path | None:
    """/var/lib/dkms where extmod keeps it as a view of its state, else None."""
    return s.paths.dkms_records if dkmsview.wanted(s.paths) else None


def sync_dkms_view(s: Session) -> None:
    """The view made again now (after what the bracket does not cover: post_transaction)."""
    _dkms_view(s)


def build_steps(s: Session, added: Added, k: Kernel) -> tuple[tuple[str, ...], bool, bool]:
    """The package's build steps as read for ``k``: its PATCHes, whether it has a
    PRE_BUILD and a POST_BUILD (what dkms says it ran)."""
    pkg = s.facts.load(added, k)
    return pkg.patches, bool(pkg.pre_build), bool(pkg.post_build)
