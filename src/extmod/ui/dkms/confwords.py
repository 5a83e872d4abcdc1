"""What DKMS 3.2.2 says of a dkms.conf (issue 35): ``read_conf``'s and ``read_conf_strict``'s
``dkms.conf: Error! …`` lines, one per fault found, before ``Error! Bad conf file.``; the
``Deprecated feature: …`` lines that reading it for add, build and install prints; and
``dkms.conf: Warning! Zero modules specified.``.

extmod's own reading (``source/package.py``) stops at the first fault and names it with
the file and the field; answering as dkms 3.1 or later, the ``dkms`` command says DKMS's
lines instead, when DKMS's checks find the fault. A fault only extmod checks for (a
module location that leaves the build dir, a regex that does not compile) keeps extmod's
line. The checks are DKMS 3.2.2's, in its order: PACKAGE_NAME, PACKAGE_VERSION; then each
record up to the highest index of the four module arrays (the arrays may be sparse): a
BUILT_MODULE_NAME (the package's name when there is one record), names that end in .o or
.ko, a DEST_MODULE_LOCATION under /kernel, /updates or /extra; the yes/no directives; and
for ``read_conf_strict``, a module named twice.
"""

from __future__ import annotations

from pathlib import Path

from extmod.core.errors import ExtmodError, UserError
from extmod.kernel.kernel import Kernel
from extmod.ops import registry, session
from extmod.ops.session import Added
from extmod.source import package, rules
from extmod.ui.dkms import words as dkmswords
from extmod.ui.dkms.args import DkmsExit
from extmod.ui.dkms.front import Front

Directives = dict[str, dict[int, str]]
_MODULE_ARRAYS = (
    "BUILT_MODULE_NAME",
    "BUILT_MODULE_LOCATION",
    "DEST_MODULE_NAME",
    "DEST_MODULE_LOCATION",
)
_YES_NO = ("AUTOINSTALL", "BUILD_DEPENDS_REBUILD", "NO_WEAK_MODULES")


def records(d: Directives) -> int:
    """DKMS's num_modules: one more than the highest index of the four module arrays."""
    return 1 + max((i for k in _MODULE_ARRAYS for i in d.get(k, {})), default=-1)


def faults(d: Directives, strict: bool = True) -> list[str]:
    """read_conf's error lines for these directives, in order; then, when there are none
    and ``strict``, read_conf_strict's."""
    out = [
        f"dkms.conf: Error! No '{k}' directive specified."
        for k in ("PACKAGE_NAME", "PACKAGE_VERSION")
        if not d.get(k, {}).get(0)
    ]
    n = records(d)
    built, dest = [], []
    for i in range(n):
        name = d.get("BUILT_MODULE_NAME", {}).get(i, "") or (
            d.get("PACKAGE_NAME", {}).get(0, "") if n == 1 else ""
        )
        loc = d.get("BUILT_MODULE_LOCATION", {}).get(i, "")
        built.append((loc if not loc or loc.endswith("/") else loc + "/") + name)
        dest.append(d.get("DEST_MODULE_NAME", {}).get(i, "") or name)
        out += _record(i, name, dest[-1], d.get("DEST_MODULE_LOCATION", {}).get(i, ""))
    for key in _YES_NO:
        value = d.get(key, {}).get(0, "")
        if value and value.lower() not in ("yes", "no"):
            out.append(f"dkms.conf: Error! Unsupported {key} value '{value}'")
    if out or not strict:
        return out  # read_conf failed: read_conf_strict stops there
    for key, names in (("BUILT_MODULE_NAME", built), ("DEST_MODULE_NAME", dest)):
        for i, m in enumerate(names):
            if m in names[:i]:
                out.append(f"dkms.conf: Error! Duplicate module '{m}' in '{key}[{i}]'.")
    return out


def _record(i: int, name: str, dest: str, where: str) -> list[str]:
    """read_conf's lines for record #i (its built and dest names, as defaulted)."""
    out = []
    if not name:
        out.append(f"dkms.conf: Error! No 'BUILT_MODULE_NAME' directive specified for record #{i}.")
    for key, value in (("BUILT_MODULE_NAME", name), ("DEST_MODULE_NAME", dest)):
        if value.endswith((".o", ".ko")):
            out.append(f"dkms.conf: Error! '{key}' directive ends in '.o' or '.ko' in record #{i}.")
    if not where:
        out.append(
            f"dkms.conf: Error! No 'DEST_MODULE_LOCATION' directive specified for record #{i}."
        )
    elif not where.startswith(("/kernel", "/updates", "/extra")):
        out.append("dkms.conf: Error! Directive 'DEST_MODULE_LOCATION' does not begin with")
        out.append(f"'/kernel', '/updates', or '/extra' in record #{i}.")
    return out


def notices(d: Directives, conf: Path) -> list[str]:
    """read_conf_strict's lines for a dkms.conf that reads: each deprecated directive, and
    the warning for a package of no module."""
    out = [f"Deprecated feature: {k} ({conf})" for k in rules.DEPRECATED if k in d]
    if records(d) == 0:
        out.append("dkms.conf: Warning! Zero modules specified.")
    return out


def directives(s: session.Session, conf: Path) -> Directives | None:
    """dkms.conf evaluated as for no kernel (None when bash cannot read it)."""
    if not conf.is_file():
        return None
    try:
        return package.evaluate(conf, None, registry.context(s))
    except (UserError, OSError):
        return None


def bad_conf(
    fr: Front, s: session.Session, conf: Path, e: UserError, named: Path, copy: Path | None = None
) -> DkmsExit:
    """The exit for a dkms.conf extmod refused (exit 8): DKMS's lines when its checks find
    the fault (said now, on stderr), else extmod's one line. ``named``: the file that
    ``File: … does not represent a valid dkms.conf file.`` names; ``copy``: the one it names
    for a fault only read_conf_strict finds (add reads the copy in /usr/src strictly)."""
    d = directives(s, conf) if fr.since("3.1") else None
    found = faults(d) if d is not None else []
    if found and copy is not None and not faults(d or {}, strict=False):
        named = copy
    for line in found:
        fr.say(line)
    return DkmsExit(
        8,
        "Bad conf file.",
        f"File: {named} does not represent a valid dkms.conf file.",
        *([] if found else [str(e)]),
    )


def say_notices(fr: Front, s: session.Session, conf: Path, named: Path) -> None:
    """read_conf_strict's notices for ``conf``, naming it as ``named`` (3.1 or later)."""
    if fr.since("3.1") and (d := directives(s, conf)) is not None:
        fr.confs_read.add(conf.resolve())
        for line in notices(d, named):
            fr.say(line)


def say_deprecations(fr: Front, s: session.Session, added: Added, k: Kernel) -> None:
    """read_conf_strict's deprecations for a build or install for ``k`` (3.1 or later), as
    the package's reading for the kernel found them, naming dkms.conf as DKMS names it;
    once per command and file, as read_conf's memo has it (an add just before said them);
    a dkms.conf that does not read says nothing here (the build says why)."""
    conf = (added.source / "dkms.conf").resolve()
    if not fr.since("3.1") or conf in fr.confs_read:  # read_conf's memo: said once
        return
    fr.confs_read.add(conf)
    try:
        pkg = s.facts.load(added, k)
    except ExtmodError:
        return
    named = source_conf(fr, s, added)
    for key in rules.DEPRECATED:
        line = f"Deprecated feature: {key} ({added.source / 'dkms.conf'})"
        if line in pkg.warnings:
            fr.say(f"Deprecated feature: {key} ({named})")


def source_conf(fr: Front, s: session.Session, added: Added) -> Path:
    """dkms.conf as DKMS names it for build and install: through its tree's source link."""
    return dkmswords.tree(fr, s) / added.name / added.version / "source" / "dkms.conf"
