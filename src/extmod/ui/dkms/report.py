"""``dkms status``, ``match`` and ``generate_mok``: DKMS's words for what the state tree holds."""

from __future__ import annotations

import re

from extmod.core.errors import (
    ExtmodError,
)
from extmod.kernel import signing
from extmod.ops import lifecycle
from extmod.store import status
from extmod.store.state import Added, State
from extmod.ui.dkms import verbs as dkmsverbs
from extmod.ui.dkms.args import DkmsExit
from extmod.ui.dkms.front import Front


def do_match(fr: Front, s: lifecycle.Session) -> int:
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
    state = State(fr.paths)
    kernels, arches = fr.a.kernels, fr.a.arches
    pairs = [(k, arches[i] if i < len(arches) else "") for i, k in enumerate(kernels)]
    if not pairs:  # no -k: every kernel, of the arch given if one is
        pairs = [("", arches[0] if arches else "")]
    lines: list[str] = []
    added = sorted(state.all_added(), key=lambda x: (x.name.encode(), x.version.encode()))
    for kver, arch in pairs:
        for a in added:
            if (fr.a.module and a.name != fr.a.module) or (
                fr.a.version and a.version != fr.a.version
            ):
                continue
            lines += _status_of(state, a, kver, arch, fr.since("3.1"))
    return lines


def generate_mok(fr: Front) -> int:
    key, cert = signing.key_pair(fr.config, fr.paths)
    if key.exists() and cert.exists():
        fr.out(f"Signing key: {key}\nPublic certificate (MOK): {cert}")
        return 0
    try:
        signing.ensure_key_pair(key, cert)
    except ExtmodError as e:
        raise DkmsExit(1, str(e)) from None
    fr.out(
        f"Signing key: {key}\nPublic certificate (MOK): {cert}\n"
        f"(enroll it with: mokutil --import {cert})"
    )
    return 0


def _status_of(state: State, a: Added, kver: str, arch: str, new: bool) -> list[str]:
    """One package's lines. ``new``: as DKMS 3.1 and later word the suffixes (3.2.2
    module_status_built_extra: each said once), else as 3.0.10 (the diff once per module)."""
    lines = []
    for b in sorted(
        state.builds(a.name, a.version), key=lambda b: (b.kver.encode(), b.arch.encode())
    ):
        if (kver and b.kver != kver) or (arch and b.arch != arch) or not re.match(r"\d", b.kver):
            continue
        rec = state.find_installed(b.kver, b.arch, a.name)
        installed = rec is not None and rec.version == a.version
        extra = ""
        if installed and rec is not None and any(f.original for f in rec.files):
            extra = " (Original modules exist)" if new else " (original_module exists)"
        if new and not all((b.dir / "module" / m.file).is_file() for m in b.modules):
            extra += " (Built modules are missing in the kernel modules folder)"
        elif installed and rec is not None:
            # dkms's module_status_built_extra diffs each built module with the installed
            # one (a deleted one differs too): 3.0.10 says so once per module, 3.2.2 once
            changed, missing = status.drift(state, rec)
            if new and (changed or missing):
                extra += " (Differences between built and installed modules)"
            elif not new:
                extra += " (WARNING! Diff between built and installed module!)" * (
                    len(changed) + len(missing)
                )
        lines.append(
            f"{a.name}/{a.version}, {b.kver}, {b.arch}: "
            f"{'installed' if installed else 'built'}{extra}"
        )
    return lines or [f"{a.name}/{a.version}: added"]
