"""``dkms status``, ``match`` and ``generate_mok``: DKMS's words for what the state tree holds."""

from __future__ import annotations

from extmod.core.errors import (
    ExtmodError,
)
from extmod.ops import commands, session
from extmod.ui.dkms import verbs as dkmsverbs
from extmod.ui.dkms.args import DkmsExit
from extmod.ui.dkms.front import Front


def do_match(fr: Front, s: session.Session) -> int:
    kver, arch = fr._one_kernel("match")
    template = fr.a.opt("template_kernel")
    if not template:
        raise DkmsExit(
            1,
            "Invalid number of parameters passed.",
            "Usage: match --templatekernel=<kernel-version> -k <kernel-version>",
        )
    if template == kver:
        raise DkmsExit(2, "The templatekernel and the specified kernel version are the same.")
    chosen = [
        r for r in s.state.all_installed(template) if not fr.a.module or r.name == fr.a.module
    ]
    if fr.a.module and not s.state.versions_of(fr.a.module):
        raise DkmsExit(3, f"The module: {fr.a.module} is not located in the DKMS tree.")
    if not chosen:
        fr.out("There is nothing to be done for this match.")
        return 0
    k = fr.load_kernel(kver, arch, missing_code=1)
    for rec in chosen:
        added = fr.added_or_die(s, rec.name, rec.version)
        dkmsverbs._run_pair(fr, s, added, k, "install")
    return 0


# -- status, keys ---------------------------------------------------------------------
def status_lines(fr: Front) -> list[str]:
    """dkms's show_status/do_status (3.0.10 and 3.2.2 alike): ``N/V: added`` when nothing
    matching the kernel and arch is built; else ``N/V, KVER, ARCH: built|installed``, with
    the suffixes of module_status_built_extra in the words of the DKMS answered as."""
    kernels, arches = fr.a.kernels, fr.a.arches
    pairs = [(k, arches[i] if i < len(arches) else "") for i, k in enumerate(kernels)]
    if not pairs:  # no -k: every kernel, of the arch given if one is
        pairs = [("", arches[0] if arches else "")]
    found = commands.dkms_status(fr.paths, fr.a.module, fr.a.version, pairs)
    new = fr.since("3.1")
    return [
        line
        for a, rows in found
        for line in ([_line(r, new) for r in rows] or [f"{a.name}/{a.version}: added"])
    ]


def generate_mok(fr: Front) -> int:
    try:
        key, cert, made = commands.generate_mok(fr.config, fr.paths)
    except ExtmodError as e:
        raise DkmsExit(1, str(e)) from None
    fr.out(f"Signing key: {key}\nPublic certificate (MOK): {cert}")
    if made:
        fr.out(f"(enroll it with: mokutil --import {cert})")
    return 0


def _line(r: commands.DkmsRow, new: bool) -> str:
    """One build in DKMS's words. ``new``: as DKMS 3.1 and later word the suffixes (3.2.2
    module_status_built_extra: each said once), else as 3.0.10 (the diff once per module)."""
    extra = ""
    if r.original_saved:
        extra = " (Original modules exist)" if new else " (original_module exists)"
    if new and r.built_missing:
        extra += " (Built modules are missing in the kernel modules folder)"
    elif r.installed and new and r.differing:
        extra += " (Differences between built and installed modules)"
    elif r.installed and not new:
        extra += " (WARNING! Diff between built and installed module!)" * r.differing
    state = "installed" if r.installed else "built"
    return f"{r.name}/{r.version}, {r.kver}, {r.arch}: {state}{extra}"
