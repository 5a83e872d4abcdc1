"""What DKMS says as it works, said by extmod's ``dkms`` (issue 33): the lines of dkms
3.2.2's ``do_build``, ``do_install``, ``do_uninstall`` and ``remove_module`` that scripts and
DKMS's own ``run_test.sh`` read, each naming DKMS's tree where DKMS names it. Where extmod
keeps ``/var/lib/dkms`` as a view of its state (``store/dkmsview.py``), those paths are
there; elsewhere the lines name extmod's own paths.

extmod's progress lines (``building …``, ``built … in``) go to stderr only with
``--verbose``; these take their place. Answering as 3.0.10, whose words differ (its build
prints make's command line), the ``dkms`` command keeps extmod's lines for a build.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from extmod.core.errors import (
    BuildError,
    ExtmodError,
    KernelError,
    LoadCheckError,
    MakeFailed,
    ScriptError,
    ToolchainError,
    UserError,
)
from extmod.kernel.kernel import Kernel
from extmod.ops import commands, session
from extmod.ops.session import Added
from extmod.source.patches import Fault, PatchError
from extmod.ui.dkms.front import Front


def tree(fr: Front, s: session.Session) -> Path:
    """DKMS's tree as the words name it: the /var/lib/dkms view where extmod keeps one,
    else extmod's state dir."""
    view = commands.dkms_tree_view(s)
    return view if view is not None else fr.paths.state_dir


def built(fr: Front, s: session.Session, added: Added, k: Kernel) -> None:
    """dkms 3.2.2 do_build: the signer (prepare_signing), then ``Building module(s)...
    done.``, then each module signed."""
    b = s.state.find_built(added.name, added.version, k.release, k.arch)
    if b is None:
        return
    if not fr.since("3.1"):
        fr.out(f"{added.ident}, {k.release}: built ({len(b.modules)} modules)")
        return
    signing_prologue(fr, s, k)
    building(fr, s, added, k)


def signing_prologue(fr: Front, s: session.Session, k: Kernel) -> None:
    """prepare_signing's lines, and the blank line after them (once per kernel)."""
    if k.release in fr.signer_said:
        return
    fr.signer_said.add(k.release)
    signer = commands.signed_with(s, k)
    if isinstance(signer, str):  # framework.conf's sign_file is not there
        fr.out(f"Sign command: {signer}")
        fr.out(f"Binary {signer} not found, modules won't be signed")
    elif signer is not None:
        fr.out(f"Sign command: {signer.sign_file}")
        fr.out(f"Signing key: {signer.key}")
        fr.out(f"Public certificate (MOK): {signer.cert}")
        if fr.mok_missing:  # this command made the pair (dkms 3.2.2 prepare_mok says so)
            fr.out("Certificate or key are missing, generating self signed certificate for MOK...")
            fr.mok_missing = False
    else:
        fr.out("The kernel is built without module signing facility, modules won't be signed")
    fr.out("")


def building(fr: Front, s: session.Session, added: Added, k: Kernel) -> None:
    """The build's own lines: done, and each module signed."""
    b = s.state.find_built(added.name, added.version, k.release, k.arch)
    if b is None:
        return
    patches, pre_build, post_build = commands.build_steps(s, added, k)
    for patch in patches:
        fr.out(f"Applying patch {patch}... done.")
    if pre_build:
        fr.out("Running the pre_build script... done.")
    fr.out("Building module(s)... done.")
    if b.record.signed:
        where = _build_dir(fr, s, added, k)
        for m in b.modules:
            fr.out(f"Signing module {where}/{m.built_name}.ko")
    if post_build:
        fr.out("Running the post_build script... done.")


def build_failed(fr: Front, s: session.Session, k: Kernel, e: MakeFailed) -> list[str]:
    """dkms 3.2.2 do_build for a MAKE that failed: invoke_command's lines, said now, and
    report_build_problem's error lines, returned (the log named is the one extmod
    wrote, where DKMS names its build dir's make.log)."""
    jobs = fr.config.build_jobs or os.cpu_count() or 1
    fr.out(f"Building module(s)...(bad exit status: {e.status})")
    fr.out("Failed command:")
    fr.out(re.sub(r"^make\b", f"make -j{jobs} KERNELRELEASE={k.release}", e.make))
    return [
        f"Bad return status for module build on kernel: {k.release} ({k.arch})",
        f"Consult {e.log} for more information.",
    ]


def patch_refused(fr: Front, s: session.Session, added: Added, k: Kernel, f: Fault) -> list[str]:
    """dkms 3.2.2 prepare_build's lines for a PATCH it cannot apply (its exit 5)."""
    if f.kind == "dots":
        return [f"Patch {f.patch} as specified in dkms.conf contains '..' path component."]
    return [
        f"Patch {f.patch} as specified in dkms.conf cannot be",
        f"found in {_build_dir(fr, s, added, k)}/patches/.",
    ]


def dkms_code(e: ExtmodError | None) -> int:
    """The status DKMS's install_module ends with for this failure (autoinstall's summary
    names each failed module with it)."""
    if isinstance(e, (BuildError, ToolchainError)) and not isinstance(e, ScriptError):
        return 10
    if isinstance(e, PatchError):
        return 5
    codes: dict[type, int] = {UserError: 8, LoadCheckError: 6, KernelError: 1}
    return codes.get(type(e), 1)


def autoinstalled(fr: Front, s: session.Session, kernels: list[Kernel]) -> None:
    """dkms 3.2.2 autoinstall: each module installed, with its build, and each left out by
    its BUILD_EXCLUSIVE, a blank line between two; after depmod, the kernel's summary."""
    if not fr.since("3.1"):
        fr._outcomes(s)
        return
    by_pair: dict[tuple[str, str], list[str]] = {}
    for o in s.outcomes:
        by_pair.setdefault((o.kver, o.ident), []).append(o.action)
    for k in kernels:
        pairs = _in_dkms_order(
            s, k, [(ident, a) for (kv, ident), a in by_pair.items() if kv == k.release]
        )
        if any(_to_build(s, k, ident, a) for ident, a in pairs):
            signing_prologue(fr, s, k)  # prepare_kernel_and_signing: a module not built
        said: dict[str, list[str]] = {"succeeded": [], "was skipped": [], "failed": []}
        current: list[str] = []  # installed before: named in the summary, as DKMS does
        printed = False
        for ident, actions in pairs:
            if actions == ["up to date"]:
                current.append(ident.split("/", 1)[0])
                said["succeeded"].append(current[-1])
            elif (one := _autoinstalled_one(fr, s, k, ident, actions, printed)) is not None:
                what, name = one
                said[what].append(name)
                printed = True
        if said["succeeded"] == current:
            said["succeeded"] = []  # nothing was installed: nothing to sum up
        lines = [
            f"Autoinstall on {k.release} {what} for module(s) {' '.join(names)}."
            for what, names in said.items()
            if names
        ]
        fr.after_depmod += ["", *lines] if lines else []
    s.outcomes.clear()


def _in_dkms_order(
    s: session.Session, k: Kernel, pairs: list[tuple[str, list[str]]]
) -> list[tuple[str, list[str]]]:
    """The modules as dkms 3.2.2's autoinstall takes them (whatever order extmod's builds
    ended in): in rounds, each round the modules whose BUILD_DEPENDS the rounds before
    installed, by name within a round."""
    names = {ident.split("/", 1)[0]: ident for ident, _ in pairs}
    depends: dict[str, list[str]] = {}
    for name, ident in names.items():
        added = s.state.find_added(*ident.split("/", 1))
        try:
            pkg = s.facts.load(added, k) if added is not None else None
        except ExtmodError:
            pkg = None
        depends[name] = [d for d in (pkg.build_depends if pkg else ()) if d in names]
    rounds: dict[str, int] = {}

    def round_of(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in rounds:
            deps = [d for d in depends[name] if d not in seen]  # a cycle ends the chain
            rounds[name] = 1 + max((round_of(d, seen | {name}) for d in deps), default=0)
        return rounds[name]

    return sorted(pairs, key=lambda p: (round_of(p[0].split("/", 1)[0]), p[0]))


def _to_build(s: session.Session, k: Kernel, ident: str, actions: list[str]) -> bool:
    """Whether DKMS would have got the signer for this module: one it built or tried to,
    and one it found left out by BUILD_EXCLUSIVE (not built either)."""
    failed = isinstance(s.errors.get((ident, k.release)), MakeFailed)
    return "built" in actions or failed or ("skipped" in actions and excluded(s, k, ident))


def excluded(s: session.Session, k: Kernel, ident: str) -> bool:
    """Whether BUILD_EXCLUSIVE leaves the package out for this kernel."""
    added = s.state.find_added(*ident.split("/", 1))
    try:
        return added is not None and bool(s.facts.load(added, k).excluded)
    except ExtmodError:
        return False


def _autoinstalled_one(
    fr: Front, s: session.Session, k: Kernel, ident: str, actions: list[str], after: bool
) -> tuple[str, str] | None:
    """One module's lines (a blank line first, ``after`` another's), and how the summary
    names it ("succeeded", "was skipped", "failed"; with its name); None: it says nothing."""
    if "deferred" in actions:  # extmod's own (a dependency apt has not configured yet)
        fr.out(f"{ident}, {k.release}: deferred until its BUILD_DEPENDS is added")
    skipped = "skipped" in actions and excluded(s, k, ident)
    if not ({"built", "installed", "failed"} & set(actions)) and not skipped:
        return None
    added = s.state.find_added(*ident.split("/", 1))
    if added is None:
        return None
    if after:
        fr.out("")
    fr.out(f"Autoinstall of module {ident} for kernel {k.release} ({k.arch})")
    if skipped:
        first, *rest = excluded_lines(fr, s, added, k)
        fr.say(f"Warning: {first}")
        for line in rest:
            fr.say(line)
        return "was skipped", added.name
    if "built" in actions:
        building(fr, s, added, k)
    error = s.errors.get((ident, k.release))
    if "failed" in actions and isinstance(error, MakeFailed):
        first, *rest = build_failed(fr, s, k, error)
        fr.say("")
        fr.say(f"Error! {first}")
        for line in rest:
            fr.say(line)
    if "failed" in actions:
        return "failed", f"{added.name}({dkms_code(error)})"
    rec = s.state.find_installed(k.release, k.arch, added.name)
    if "installed" in actions and rec is not None:
        installed(fr, s, rec)
        return "succeeded", added.name
    return None


def excluded_lines(fr: Front, s: session.Session, added: Added, k: Kernel) -> list[str]:
    """do_build's words for a kernel that BUILD_EXCLUSIVE leaves out (3.2.2 diewarn 77),
    naming the build's dir in DKMS's tree as DKMS does."""
    base = tree(fr, s) / added.name / added.version / k.release / k.arch
    return [
        f"The {base}/dkms.conf",
        f"for module {added.ident} includes a BUILD_EXCLUSIVE directive",
        "which does not match this kernel/arch/config.",
        "This indicates that it should not be built.",
    ]


def removing(fr: Front, s: session.Session, kver: str) -> Iterator[Added]:
    """kernel_prerm: each module of the kernel, its install that goes (or that it is not
    installed), yielded to be taken out then; its POST_REMOVE's lines, and a blank line
    after each (dkms 3.2.2 kernel_prerm)."""
    for added in sorted(s.state.all_added(), key=lambda a: a.ident):
        builds = [b for b in s.state.builds(added.name, added.version) if b.kver == kver]
        rec = next(
            (r for r in s.state.installs_of(added.name, [kver]) if r.version == added.version), None
        )
        if not builds and rec is None:
            continue
        arch = builds[0].arch if builds else rec.arch if rec else ""
        fr.out(f"dkms: removing module {added.ident} for kernel {kver} ({arch})")
        if rec is not None:
            uninstalled(fr, rec)
        else:
            fr.out(f"Module {added.ident} is not installed for kernel {kver} ({arch}). Skipping...")
        yield added
        fr.say_scripts("POST_REMOVE")
        fr.out("")


def _build_dir(fr: Front, s: session.Session, added: Added, k: Kernel) -> Path:
    view = commands.dkms_tree_view(s)
    if view is not None:
        return view / added.name / added.version / "build"
    return fr.paths.dkms_tree(added.name, added.version, k.release) / added.ident / "build"


def installed(fr: Front, s: session.Session, rec: commands.InstalledRecord) -> None:
    """do_install: each module put in place."""
    if not fr.since("3.1"):
        fr.out(f"{rec.name}/{rec.version}, {rec.kver}: installed ({len(rec.files)} modules)")
        return
    fr.say_scripts("PRE_INSTALL")
    for f in rec.files:
        fr.out(f"Installing {fr.paths.modules_dir / rec.kver / f.path}")
    fr.say_scripts("POST_INSTALL")


def uninstalled(fr: Front, rec: commands.InstalledRecord) -> None:
    """do_uninstall: the version that was active, and each module taken out."""
    if not fr.since("3.1"):
        fr.out(f"{rec.name}/{rec.version}, {rec.kver}: uninstalled")
        return
    fr.out(f"Module {rec.name}/{rec.version} for kernel {rec.kver} ({rec.arch}):")
    fr.out("Before uninstall, this module version was ACTIVE on this kernel.")
    for f in rec.files:
        fr.out(f"Deleting {fr.paths.modules_dir / rec.kver / f.path}")
    fr.say_scripts("POST_REMOVE")  # do_uninstall runs it after the modules are out


def not_installed(fr: Front, added: Added, kver: str, arch: str) -> None:
    if fr.since("3.1"):
        fr.out(f"Module {added.ident} is not installed for kernel {kver} ({arch}). Skipping...")
    else:
        fr.out(
            f"Module {added.name} {added.version} is not installed for kernel {kver}. Skipping..."
        )


def not_built(fr: Front, added: Added, kver: str, arch: str) -> None:
    if fr.since("3.1"):
        fr.out(f"Module {added.ident} is not built for kernel {kver} ({arch}). Skipping...")
    else:
        fr.out(f"Module {added.name} {added.version} is not built for kernel {kver}. Skipping...")


def removed(fr: Front, added: Added, after_lines: bool) -> None:
    """remove_module's last line (a blank line after the kernels' lines, as DKMS)."""
    ident = added.ident if fr.since("3.1") else f"{added.name}-{added.version}"
    if after_lines and fr.since("3.1"):
        fr.out("")
    fr.out(f"Deleting module {ident} completely from the DKMS tree.")


def depmod(fr: Front, kver: str) -> None:
    if fr.since("3.1"):
        fr.out("Running depmod... done.")
    else:
        fr.say(f"depmod {kver}")


def added_link(fr: Front, s: session.Session, added: Added, src: Path) -> None:
    """add_module: the source link in DKMS's tree."""
    fr.out(f"Creating symlink {tree(fr, s)}/{added.name}/{added.version}/source -> {src}")
    fr.say_scripts("POST_ADD")
