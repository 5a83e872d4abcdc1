"""``dkms build``, ``install``, ``uninstall``, ``unbuild``, ``remove``, ``autoinstall`` and
the kernel hooks' ``kernel_postinst``/``kernel_prerm``, with DKMS's exit codes."""

from __future__ import annotations

import os

from extmod.core.errors import (
    BuildError,
    ExcludedError,
    ExtmodError,
    KernelError,
    LoadCheckError,
    MakeFailed,
    ToolchainError,
    UserError,
)
from extmod.kernel.kernel import Kernel
from extmod.ops import commands, freshness, installer, plan, session
from extmod.ops.commands import InstalledRecord as Installed
from extmod.ops.session import Added
from extmod.source.patches import PatchError
from extmod.ui.dkms import add as dkmsadd
from extmod.ui.dkms import confwords
from extmod.ui.dkms import words as dkmswords
from extmod.ui.dkms.args import DkmsExit
from extmod.ui.dkms.front import Front


def do_build(fr: Front, s: session.Session) -> int:
    return _build_or_install(fr, s, "build")


def do_install(fr: Front, s: session.Session) -> int:
    return _build_or_install(fr, s, "install")


def _build_or_install(fr: Front, s: session.Session, action: str) -> int:
    if "all" in fr.a.flags:
        raise DkmsExit(5, f"The action {action} does not support the --all parameter.")
    added = dkmsadd.resolve(fr, s, action)
    force = "force" in fr.a.flags
    for kver, arch in fr.kernel_pairs():
        _kernel_exists(fr, s, added, kver, arch, action)
        done = (
            s.state.find_installed(kver, arch, added.name)
            if action == "install"
            else s.state.find_built(added.name, added.version, kver, arch)
        )
        if done is not None and not force and (action == "build" or done.version == added.version):
            where = "built for" if action == "build" else "installed on"
            fr.out(
                f"Module {added.ident} already {where} kernel {kver} ({arch}), "
                f"skip. You may override by specifying --force."
            )
            continue
        if action == "install" and force and fr.since("3.1") and isinstance(done, Installed):
            _reinstall_first(fr, s, done)
        if fr.sourceless(added) and not s.state.find_built(added.name, added.version, kver, arch):
            raise DkmsExit(
                8,
                f"{added.ident} is a binaries-only package with no modules "
                f"for {kver} ({arch}): there is no source to build.",
            )
        k = fr.load_kernel(kver, arch, missing_code=1)
        if not fr.sourceless(added):
            confwords.say_deprecations(fr, s, added, k)
        # install --force reinstalls a built module without building it (above)
        builds = force and action == "build"
        if fr.since("3.1.4") and (
            builds or not s.state.find_built(added.name, added.version, kver, arch)
        ):
            if not dkmswords.excluded(s, k, added.ident):  # do_build: exclusion first
                dkmswords.signing_prologue(fr, s, k)  # prepare_build: then the signer
            _depends_or_die(fr, s, added, k)
        _run_pair(fr, s, added, k, action)
    return 0


def _depends_or_die(fr: Front, s: session.Session, added: Added, k: Kernel) -> None:
    """dkms 3.1.4 prepare_build: a BUILD_DEPENDS with no version installed for the kernel
    stops the build (exit 13), or with --force is warned of."""
    try:
        missing = commands.missing_depends(s, added, k)
    except UserError as e:
        conf = added.source / "dkms.conf"
        raise confwords.bad_conf(fr, s, conf, e, confwords.source_conf(fr, s, added)) from None
    if not missing:
        return
    what = f"module {added.ident} for kernel {k.release} ({k.arch})"
    names = " ".join(missing)
    if "force" in fr.a.flags:
        fr.say(f"Warning: Trying to build {what} despite of missing BUILD_DEPENDS: {names}.")
        return
    raise DkmsExit(
        13,
        f"Aborting build of {what} due to missing BUILD_DEPENDS: {names}.",
        "You may override by specifying --force.",
    )


def _reinstall_first(fr: Front, s: session.Session, rec: Installed) -> None:
    """dkms 3.2.2 install --force of an installed module: it is uninstalled first (depmod
    run), then installed again; a module that is built is not built again."""
    installer.uninstall(s, rec)
    dkmswords.uninstalled(fr, rec)
    for kver in installer.run_depmod(s):
        dkmswords.depmod(fr, kver)
    fr.out("")
    s.outcomes.clear()


def _kernel_exists(
    fr: Front, s: session.Session, added: Added, kver: str, arch: str, action: str
) -> None:
    """dkms 3.0.10's do_install builds first when the pair is not built (do_build's
    prepare_kernel: exit 1, the headers are missing), and only then refuses a kernel whose
    /lib/modules/KVER does not exist (exit 6)."""
    if action != "install" or fr.a.opt("kernel_source_dir"):
        return
    if s.state.find_built(added.name, added.version, kver, arch) is None:
        fr.load_kernel(kver, arch, missing_code=1)
    kdir = fr.paths.kernels_dir / kver
    if not kdir.exists():
        raise DkmsExit(
            6,
            f"The directory {kdir} doesn't exist.",
            "You cannot install a module onto a non-existant kernel.",  # 3.0.10's spelling
        )


def _run_pair(fr: Front, s: session.Session, added: Added, k: Kernel, action: str) -> None:
    verb = freshness.build_if_needed if action == "build" else installer.install_pair
    # dkms install builds only what is not built: its --force reinstalls (above)
    s.force = "force" in fr.a.flags and action == "build"
    try:
        with s.job(added, k):
            verb(s, added, k, None)
    except ExtmodError as e:
        raise _dkms_exit(fr, s, added, k, e) from None
    actions = [o.action for o in s.outcomes if o.kver == k.release and o.ident == added.ident]
    if "built" in actions:
        dkmswords.built(fr, s, added, k)
    rec = s.state.find_installed(k.release, k.arch, added.name)
    if "installed" in actions and rec is not None:
        dkmswords.installed(fr, s, rec)
    s.outcomes.clear()
    if action == "install" and fr.modprobe and k.release == os.uname().release:
        _modprobe(fr, s, added, k)


def _dkms_exit(fr: Front, s: session.Session, added: Added, k: Kernel, e: ExtmodError) -> DkmsExit:
    """A build's or install's failure as DKMS ends with it: its exit code and words (as
    3.2.2 says a failed make and a PATCH it cannot apply, after the signer's lines)."""
    bad_build = f"Bad return status for module build on kernel: {k.release} ({k.arch})"
    if isinstance(e, (MakeFailed, PatchError)) and fr.since("3.1"):
        dkmswords.signing_prologue(fr, s, k)
        if isinstance(e, MakeFailed):
            return DkmsExit(10, *dkmswords.build_failed(fr, s, k, e))
        return DkmsExit(5, *dkmswords.patch_refused(fr, s, added, k, e.fault))
    if isinstance(e, ExcludedError) and fr.since("3.1"):
        return DkmsExit(77, *dkmswords.excluded_lines(fr, s, added, k), warn=True)
    if isinstance(e, ExcludedError):
        return DkmsExit(77, f"{e}", "This indicates that it should not be built.")
    if isinstance(e, (BuildError, ToolchainError)):
        return DkmsExit(10, bad_build, str(e))
    if isinstance(e, LoadCheckError):
        return DkmsExit(6, str(e), "Installation aborted.")
    if isinstance(e, PatchError):
        return DkmsExit(5, str(e))
    if isinstance(e, UserError):
        conf = added.source / "dkms.conf"
        return confwords.bad_conf(fr, s, conf, e, confwords.source_conf(fr, s, added))
    if isinstance(e, KernelError):
        return DkmsExit(1, str(e))
    raise e


def _modprobe(fr: Front, s: session.Session, added: Added, k: Kernel) -> None:
    for warning in commands.load_modules(s, added.name, k.release, k.arch):
        fr.say(f"Warning: {warning}")


def _selected(
    fr: Front, s: session.Session, action: str
) -> tuple[Added, list[tuple[str, str]] | None]:
    name, version = fr.need_module_version(action)
    added = fr.added_or_die(s, name, version)
    if "all" in fr.a.flags:
        return added, None
    return added, fr.kernel_pairs()


def _install_of(s: session.Session, added: Added, kver: str) -> Installed | None:
    return next(
        (r for r in s.state.installs_of(added.name, [kver]) if r.version == added.version),
        None,
    )


def do_uninstall(fr: Front, s: session.Session) -> int:
    added, pairs = _selected(fr, s, "uninstall")
    every = [(r.kver, r.arch) for r in s.state.installs_of(added.name)]
    for kver, arch in pairs if pairs is not None else every:
        rec = _install_of(s, added, kver)
        if rec is None:
            dkmswords.not_installed(fr, added, kver, arch)
            continue
        installer.uninstall(s, rec)
        dkmswords.uninstalled(fr, rec)
    s.outcomes.clear()
    return 0


def do_unbuild(fr: Front, s: session.Session) -> int:
    added, pairs = _selected(fr, s, "unbuild")
    _say_each_kernel(fr, s, added, pairs)
    installer.unbuild(s, added, None if pairs is None else [k for k, _ in pairs])
    fr.say_scripts("POST_REMOVE")  # after the modules are out, before depmod
    s.outcomes.clear()
    return 0


def do_remove(fr: Front, s: session.Session) -> int:
    added, pairs = _selected(fr, s, "remove")
    said = _say_each_kernel(fr, s, added, pairs)
    installer.remove(s, added, None if pairs is None else [k for k, _ in pairs])
    fr.say_scripts("POST_REMOVE")  # after the modules are out, before depmod
    for kver in installer.run_depmod(s):  # before the last line, as dkms says it
        dkmswords.depmod(fr, kver)
    if s.state.find_added(added.name, added.version) is None:
        dkmswords.removed(fr, added, said)
    s.outcomes.clear()
    return 0


def _say_each_kernel(
    fr: Front, s: session.Session, added: Added, pairs: list[tuple[str, str]] | None
) -> bool:
    """What dkms's unbuild and remove say for each kernel before they act (they uninstall
    first): the install that goes, or that none is there; a build that is not there."""
    built = {(b.kver, b.arch) for b in s.state.builds(added.name, added.version)}
    said = False
    for kver, arch in pairs if pairs is not None else sorted(built):
        rec = _install_of(s, added, kver)
        if rec is not None:
            dkmswords.uninstalled(fr, rec)
        else:
            dkmswords.not_installed(fr, added, kver, arch)
        if (kver, arch) not in built:
            dkmswords.not_built(fr, added, kver, arch)
        said = True
    return said


def do_autoinstall(fr: Front, s: session.Session) -> int:
    """dkms autoinstall (and kernel_postinst, its wrapper): /etc/dkms/no-autoinstall turns
    it off (3.1.4+); a kernel without headers is exit 21 when something is to be built for
    it, and nothing at all when nothing is (3.1.6 prepare_kernel: only for a module not yet
    built); 3.0.10 counted it a failed module (exit 11)."""
    if fr.since("3.1.6") and (fr.paths.etc_dkms / "no-autoinstall").exists():
        fr.out("Automatic installation of modules has been disabled.")
        return 0
    kernels = []
    for kver, arch in fr.kernel_pairs():
        try:
            kernels.append(fr.load_kernel(kver, arch, missing_code=11))
        except DkmsExit as e:
            if not fr.since("3.1.6"):
                raise
            if not commands.to_build(s, kver, arch):
                continue
            raise DkmsExit(21, *e.lines) from None
    plan.autoinstall(s, kernels)
    failed = [o for o in s.outcomes if o.exit_code]
    dkmswords.autoinstalled(fr, s, kernels)
    if failed:
        raise DkmsExit(
            11,
            "One or more modules failed to install during autoinstall.",
            "Refer to previous errors for more information.",
        )
    return 0


def do_kernel_postinst(fr: Front, s: session.Session) -> int:
    fr._one_kernel("kernel_postinst")
    return do_autoinstall(fr, s)


def do_kernel_preinst(fr: Front, s: session.Session) -> int:
    """dkms 3.2.2 kernel_preinst: unbuild the AUTOINSTALL packages built for the kernel
    (its postinst builds them again); exit 14 naming the ones that failed."""
    kver, arch = fr._one_kernel("kernel_preinst")
    installer.prepare_kernel(s, kver)
    failed = [o.ident for o in s.outcomes if o.exit_code]
    fr._outcomes(s)
    if failed:
        raise DkmsExit(
            14,
            f"dkms kernel_preinst for kernel {kver} ({arch}) failed for module(s) "
            f"{' '.join(failed)}.",
        )
    return 0


def do_kernel_prerm(fr: Front, s: session.Session) -> int:
    kver, _ = fr._one_kernel("kernel_prerm")
    if fr.since("3.1"):
        for added in dkmswords.removing(fr, s, kver):
            installer.unbuild(s, added, [kver])  # forget_kernel finds it gone
    installer.forget_kernel(s, kver)
    if fr.since("3.1"):
        s.outcomes.clear()
    fr._outcomes(s)
    return 0
