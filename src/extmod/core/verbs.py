"""The one table of verbs (issue 34): every verb of ``extmod`` and every action of its
``dkms``, one row per job, and what each door, the bracket, the settings and the docs ask
of it.

Nothing here runs a verb. The doors take what they need from the table: ``ui/argv.py`` the
verbs and their help, ``ui/cli.py`` and ``ui/dkms/cli.py`` their handlers (keyed by the
names here, and checked against them), ``ops/commands.py`` the lifecycle actions and the
bracket's rules, ``core/settings.py`` which verbs take the build options, ``ui/docgen.py``
the verb reference (``docs/reference/verbs.md``). ``tests/house/test_verbs.py`` fails when a
verb is in one of those places and not in the table, or the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verb:
    """One job, as each command line names it."""

    extmod: str | None  # the verb of ``extmod``; None: only ``dkms`` has it
    dkms: str | None  # the action of ``dkms``; None: only ``extmod`` has it
    help: str  # one line, for ``extmod --help``, the man page and the completions
    usage: tuple[tuple[str, str], ...] = ()  # (synopsis, what it does), for the docs
    jobs: bool = False  # runs (package, kernel) jobs: the build options, the live view
    lifecycle: bool = False  # an action over packages, run in ``commands.bracket``
    verify_after: bool = False  # ``[verify] after_install`` runs after it
    own_initramfs_hook: bool = False  # the kernel's own initramfs hook runs after it
    dkms_root: bool = False  # DKMS's check_root: ``dkms`` refuses it to a user (exit 1)
    dkms_one_kernel: bool = False  # DKMS's have_one_kernel: exactly one -k, no --all
    dkms_no_all: bool = False  # at most one -k and no --all (autoinstall, match)


TABLE: tuple[Verb, ...] = (
    Verb(
        "kernels",
        None,
        "list kernels and their toolchains",
        (
            (
                "extmod kernels [--kernel-dir DIR]…",
                "every kernel under `ROOT/lib/modules/*/build` (and the trees given): release, "
                "arch, compiler and version, linker, LTO mode, where its own kbuild would put "
                "the ThinLTO cache, whether its toolchain is installed here.",
            ),
        ),
    ),
    Verb(
        "add",
        "add",
        "register a DKMS package (SRC_DIR or NAME/VERSION)",
        (
            (
                "extmod add SRC_DIR|NAME/VERSION",
                "check the dkms.conf (evaluated for the newest kernel here), copy SRC_DIR to "
                "`/usr/src/NAME-VERSION` unless it is there, register it, run `POST_ADD`.",
            ),
        ),
        lifecycle=True,
    ),
    Verb(
        "build",
        "build",
        "build a package, or a bare kbuild dir, for kernels",
        (
            (
                "extmod build PKG [-k KVER]… [-j N] [--force] [--launcher ccache]",
                "add if needed; build with the kernel's toolchain in the package's own build "
                "dir per kernel; strip, sign, compress; record the result. Prints a "
                "reproducer first. A recorded build with the same inputs is kept "
                "(`up to date`); `--force` builds anyway.",
            ),
            (
                "extmod build SRC_DIR (-k KVER|--kernel-dir DIR) [-o DIR] [--name NAME]",
                "a bare kbuild dir (no dkms.conf): build it and collect the `.ko` files "
                "(default `STATE/modules/KVER/NAME/`); nothing is registered.",
            ),
        ),
        jobs=True,
        lifecycle=True,
    ),
    Verb(
        "install",
        "install",
        "build if needed, then install into /lib/modules/KVER",
        (
            (
                "extmod install PKG [-k KVER]… [-j N] [--force] [--build-user USER]",
                "build if needed (when an input changed), then install into "
                "`/lib/modules/KVER`, run `PRE_INSTALL`/`POST_INSTALL`, and `depmod` once per "
                "kernel.",
            ),
        ),
        jobs=True,
        lifecycle=True,
        dkms_root=True,
    ),
    Verb(
        "uninstall",
        "uninstall",
        "take installed modules out (originals go back)",
        (
            (
                "extmod uninstall NAME[/VER]… (-k KVER…|--all)",
                "remove the installed files (only if unchanged since), put back an in-tree "
                "module the install replaced, `depmod`.",
            ),
        ),
        lifecycle=True,
        dkms_root=True,
    ),
    Verb(
        "unbuild",
        "unbuild",
        "uninstall, and forget the builds",
        (
            (
                "extmod unbuild NAME[/VER]… (-k KVER…|--all)",
                "uninstall, then forget the builds and build dirs.",
            ),
        ),
        lifecycle=True,
    ),
    Verb(
        "remove",
        "remove",
        "uninstall and unbuild; unregister when no build is left",
        (
            (
                "extmod remove NAME[/VER]… (-k KVER…|--all)",
                "unbuild; once no build is left, unregister (the source in `/usr/src` "
                "stays, as with DKMS). `POST_REMOVE` runs after each uninstall, as DKMS runs "
                "it. Several packages in one command: one `depmod` per kernel for all of them.",
            ),
        ),
        lifecycle=True,
    ),
    Verb(
        "status",
        "status",
        "each package, version, kernel: added, built, installed",
        (
            (
                "extmod status [NAME[/VER]] [-k KVER]",
                "`NAME/VERSION, KVER, ARCH: added|built|installed`, with `(original module "
                "saved)` where an install replaced an in-tree module, and `(changed since "
                "installed: PATH)` / `(deleted since installed: PATH)` for an installed "
                "module someone changed or removed (the file's size, mtime and ctime are kept "
                "in the install record; it is hashed only when they differ). `--json` adds the "
                "same-named modules it shadows elsewhere.",
            ),
        ),
    ),
    Verb(
        "autoinstall",
        "autoinstall",
        "install every AUTOINSTALL package (default: onto every installed kernel)",
        (
            (
                "extmod autoinstall [-k KVER]… [-j N] [--force]",
                "every added package with `AUTOINSTALL=yes` (its newest version) onto each "
                "kernel (default: every kernel under `ROOT/lib/modules`), all pairs at once "
                "under one job budget, `BUILD_DEPENDS` first; up-to-date ones are left alone, "
                "`BUILD_EXCLUSIVE` ones skipped, a failure reported and the others go on; "
                "`depmod` once per kernel. Exit status: that of the first failure.",
            ),
        ),
        jobs=True,
        lifecycle=True,
        verify_after=True,
        dkms_root=True,
        dkms_no_all=True,
    ),
    Verb(
        "kernel-preinst",
        "kernel_preinst",
        "hook for a kernel package about to be installed or upgraded: remove the "
        "AUTOINSTALL packages built for that release (its postinst builds them again)",
        (
            (
                "extmod kernel-preinst KVER",
                "the kernel's preinst.d hook (as dkms 3.1.6's `kernel_preinst`): unbuild the "
                "AUTOINSTALL packages built for a release about to be installed again.",
            ),
        ),
        lifecycle=True,
        dkms_root=True,
        dkms_one_kernel=True,
    ),
    Verb(
        "kernel-postinst",
        "kernel_postinst",
        "hook for a newly installed kernel: autoinstall",
        (
            (
                "extmod kernel-postinst KVER",
                "the kernel's postinst.d hook: autoinstall onto the new kernel (exit 0 with "
                "a note when its headers are not there yet: their own hook runs it again).",
            ),
        ),
        jobs=True,
        lifecycle=True,
        verify_after=True,
        own_initramfs_hook=True,
        dkms_root=True,
        dkms_one_kernel=True,
    ),
    Verb(
        "kernel-prerm",
        "kernel_prerm",
        "hook for a kernel about to be removed: remove every package's modules and builds for it",
        (
            (
                "extmod kernel-prerm KVER",
                "the kernel's prerm.d hook: uninstall and unbuild everything for a kernel "
                "about to go, and forget the rest kept for it (every package's build dirs, "
                "failed ones too, and verify's records).",
            ),
        ),
        lifecycle=True,
        dkms_root=True,
        dkms_one_kernel=True,
    ),
    Verb(
        "install-hooks",
        None,
        "wire extmod into kernel installs: Debian postinst.d/prerm.d, kernel-install, "
        "pacman, a systemd unit for boot",
        (
            (
                "extmod install-hooks [--for KIND]… [--exec PATH] [--no-enable] [--remove]",
                "write the kernel hooks; KIND: `debian`, `kernel-install`, `pacman`, "
                "`systemd` (default: what the root shows it uses). Idempotent.",
            ),
        ),
    ),
    Verb(
        "preflight",
        None,
        "before a kernel is installed: build every AUTOINSTALL package for it (from its "
        "header packages, or the next upgrade's), install nothing, report each",
        (
            (
                "extmod preflight (--deb FILE…|--candidates|-k KVER…|--kernel-dir DIR…) [--json]",
                "build every AUTOINSTALL package for a kernel not installed yet (from its "
                "Debian header packages, or those the next upgrade brings), install nothing, "
                "report each (package, kernel): `builds`, `skipped`, `fails`. The builds go "
                "to the build store. Exit: the first failure's code, else 0.",
            ),
        ),
    ),
    Verb(
        "apt-guard",
        None,
        "what apt runs before dpkg unpacks (DPkg::Pre-Install-Pkgs, protocol 3 on stdin): "
        "preflight the incoming kernels; [guard] mode decides",
        (
            (
                "extmod apt-guard",
                "what apt runs before dpkg unpacks (`DPkg::Pre-Install-Pkgs`, apt's list on "
                "stdin): preflight the incoming kernels; `[guard] mode` warns or refuses "
                "(exit 13).",
            ),
        ),
    ),
    Verb(
        "verify",
        None,
        "boot each kernel in a VM (qemu) and load the modules extmod installed for it",
        (
            (
                "extmod verify [-k KVER]… [NAME[/VER]…] [--timeout S] [--accel auto|kvm|tcg] "
                "[--image FILE]",
                "boot each kernel in qemu and load, then unload, every module extmod "
                "installed for it; one row per module (loaded, failed with the kernel's "
                "words, oops, hung). Exit 10 when one fails, 11 when the kernel cannot be "
                "booted here.",
            ),
        ),
    ),
    Verb(
        "export",
        None,
        "write a binary package (deb or tar) of a package's modules for each kernel, that "
        "installs with the package manager alone",
        (
            (
                "extmod export NAME[/VER] [-k KVER]… [--format deb|tar] -o DIR",
                "one binary package per kernel with the modules as installed, that installs "
                "with apt alone.",
            ),
        ),
        lifecycle=True,
    ),
    Verb(
        "doctor",
        None,
        "check headers, toolchains, signing, caches and hooks; print the command that fixes "
        "each problem",
        (
            (
                "extmod doctor [-k KVER]…",
                "check tools, headers, toolchain, signing (and MOK enrollment under Secure "
                "Boot), cache sizes, interrupted operations, failed builds, DKMS still in "
                "charge, hooks; each problem comes with the command that fixes it. Exit: "
                "that of the first failure (warnings do not fail). Writes nothing.",
            ),
        ),
    ),
    Verb(
        "import-dkms",
        None,
        "take over every package DKMS manages (/var/lib/dkms), without rebuilding",
        (
            (
                "extmod import-dkms [--dry-run] [--keep-dkms]",
                "take over every package DKMS manages, without rebuilding.",
            ),
        ),
        lifecycle=True,
    ),
    Verb(
        "clean",
        None,
        "remove build dirs and ThinLTO caches",
        (
            (
                "extmod clean [NAME] [-k KVER] [--all]",
                "remove kept build dirs and ThinLTO cache namespaces.",
            ),
        ),
    ),
    Verb(
        "cache",
        None,
        "inspect or prune the ThinLTO cache",
        (
            (
                "extmod cache show / extmod cache prune",
                "each cache namespace, kept build dir and stored build with its size and file "
                "count / apply the size and age policy now.",
            ),
        ),
    ),
    Verb(
        None,
        "match",
        "install the modules of every package installed on --templatekernel",
        dkms_root=True,
        dkms_no_all=True,
    ),
    Verb(None, "mktarball", "write a package's source and builds into a tarball"),
    Verb(None, "ldtarball", "add and load the builds of a tarball mktarball made"),
    Verb(None, "generate_mok", "make the signing key pair framework.conf names"),
)


def extmod_verbs() -> tuple[str, ...]:
    """Every verb of ``extmod``, in the order of ``extmod --help``."""
    return tuple(v.extmod for v in TABLE if v.extmod)


def dkms_actions() -> tuple[str, ...]:
    """Every action of ``dkms``."""
    return tuple(v.dkms for v in TABLE if v.dkms)


def of(name: str) -> Verb:
    """The row of an ``extmod`` verb or a ``dkms`` action."""
    for v in TABLE:
        if name in (v.extmod, v.dkms):
            return v
    raise KeyError(name)


def names(**wanted: bool) -> frozenset[str]:
    """Both names of every row whose flags are as ``wanted`` (``names(jobs=True)``)."""
    return frozenset(
        n
        for v in TABLE
        if all(getattr(v, k) == want for k, want in wanted.items())
        for n in (v.extmod, v.dkms)
        if n
    )


def extmod_names(**wanted: bool) -> tuple[str, ...]:
    """The ``extmod`` verbs whose flags are as ``wanted``, in table order."""
    return tuple(
        v.extmod
        for v in TABLE
        if v.extmod and all(getattr(v, k) == want for k, want in wanted.items())
    )


def reference_markdown() -> str:
    """The verb reference (``docs/reference/verbs.md``'s table), from the table."""
    lines = ["| verb | `dkms` action | what it does |", "|---|---|---|"]
    for v in TABLE:
        dkms = f"`{v.dkms}`" if v.dkms else ""
        rows = v.usage or ((f"dkms {v.dkms}", v.help),)
        for synopsis, text in rows:
            cell = "`" + synopsis.replace("|", "\\|") + "`" if v.extmod else ""
            lines.append(f"| {cell} | {dkms} | {text.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)
