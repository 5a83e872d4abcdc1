"""extmod's command line as argparse sees it: the verbs, their arguments, and each verb's
options from the settings table (core/settings.py). ``ui/cli.py`` runs what it parses."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from extmod import __version__
from extmod.core import settings
from extmod.core import verbs as table
from extmod.core.errors import EXIT_CODES
from extmod.ops import hooks


def parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES)
    p = argparse.ArgumentParser(
        prog="extmod",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        description="Build out-of-tree Linux kernel modules with each kernel's own toolchain.",
        epilog=f"exit codes:\n{codes}",
    )
    p.add_argument("--version", action="version", version=f"extmod {__version__}")
    _global_args(p)
    # The same options after the verb too (`extmod build --json ...`); SUPPRESS keeps a
    # sub-parser from overwriting what was given before the verb.
    common = argparse.ArgumentParser(
        add_help=False, argument_default=argparse.SUPPRESS, allow_abbrev=False
    )
    _global_args(common)
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser

    def verb(name: str, **kw: Any) -> argparse.ArgumentParser:
        # the help of every verb is the verb table's (core/verbs.py), which refuses a verb
        # it does not have
        v = add(name, parents=[common], allow_abbrev=False, help=table.of(name).help, **kw)
        _setting_args(v, name)
        return v

    verbs.add_parser = verb  # type: ignore[method-assign]

    _package_verbs(verbs)
    _hook_verbs(verbs)
    _preflight_verbs(verbs)
    _tool_verbs(verbs, common)
    # What a verb does not take reads as not given, so the doors need no getattr.
    p.set_defaults(
        kernel=[],
        kernel_dir=None,
        all=False,
        force=False,
        what=None,
        targets=None,
        kver=None,
        format="",
        output=None,
        keep_dkms=False,
    )
    return p


def _package_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """kernels, and the DKMS verbs over packages."""
    k = verbs.add_parser("kernels")
    k.add_argument(
        "--kernel-dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also describe this prepared tree (repeatable)",
    )

    a = verbs.add_parser("add")
    a.add_argument("what", metavar="SRC_DIR|NAME/VERSION")

    b = verbs.add_parser("build")
    b.add_argument("what", metavar="SRC_DIR|NAME[/VERSION]")
    _kernel_args(b)
    b.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="DIR",
        help="bare kbuild dir only: where to put the .ko files (default STATE/modules/KVER/NAME)",
    )
    b.add_argument("--name", help="bare kbuild dir only: package name (default: the dir's name)")
    _force_arg(b)

    for name in ("install", "uninstall", "unbuild"):
        v = verbs.add_parser(name)
        if name == "install":
            v.add_argument("what", metavar="SRC_DIR|NAME[/VERSION]")
        else:
            v.add_argument("targets", nargs="+", metavar="NAME[/VERSION]")
        _kernel_args(v, all_flag=name != "install")
        if name == "install":
            _force_arg(v)

    r = verbs.add_parser("remove")
    r.add_argument("targets", nargs="+", metavar="NAME[/VERSION]")
    _kernel_args(r, all_flag=True)

    st = verbs.add_parser("status")
    st.add_argument("what", nargs="?", metavar="NAME[/VERSION]")
    st.add_argument("-k", "--kernel", metavar="KVER")


def _hook_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """What the kernel hooks run, and the verb that wires them in."""
    ai = verbs.add_parser("autoinstall")
    ai.add_argument("-k", "--kernel", metavar="KVER", action="append", default=[])
    _force_arg(ai)
    for name in ("kernel-preinst", "kernel-postinst", "kernel-prerm"):
        h = verbs.add_parser(name)
        h.add_argument("kver", metavar="KVER")
        if name == "kernel-postinst":
            _force_arg(h)

    ih = verbs.add_parser("install-hooks")
    ih.add_argument(
        "--for",
        dest="kinds",
        action="append",
        choices=sorted(hooks.KINDS),
        metavar="KIND",
        help=f"which hooks ({', '.join(sorted(hooks.KINDS))}; repeatable; default: what ROOT uses)",
    )
    ih.add_argument(
        "--exec",
        dest="executable",
        metavar="PATH",
        help="the extmod the hooks run (default: this one; packagers: /usr/bin/extmod)",
    )
    ih.add_argument(
        "--no-enable", action="store_true", help="write the systemd unit but do not enable it"
    )
    ih.add_argument("--remove", action="store_true", help="take extmod's hooks out again")


def _preflight_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Before a kernel comes (issue 25): preflight, and what apt's guard runs."""
    pf = verbs.add_parser("preflight")
    pf.add_argument(
        "--deb",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="Debian header packages (linux-headers-KVER-ARCH, its -common, linux-kbuild)",
    )
    pf.add_argument(
        "--candidates",
        action="store_true",
        help="the header packages the next apt-get upgrade would install (apt-get download)",
    )
    pf.add_argument("-k", "--kernel", metavar="KVER", action="append", default=[])
    pf.add_argument("--kernel-dir", type=Path, action="append", default=[], metavar="DIR")
    verbs.add_parser("apt-guard")


def _export_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ex = verbs.add_parser("export")
    ex.add_argument("what", metavar="NAME[/VERSION]")
    _kernel_args(ex)
    ex.add_argument("--format", choices=("deb", "tar"), default="deb", help="default: deb")
    ex.add_argument(
        "-o", "--output", type=Path, required=True, metavar="DIR", help="where the packages go"
    )


def _verify_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vf = verbs.add_parser("verify")
    vf.add_argument("targets", nargs="*", metavar="NAME[/VERSION]")
    vf.add_argument(
        "-k",
        "--kernel",
        metavar="KVER",
        action="append",
        default=[],
        help="this kernel (repeatable; default: every kernel extmod installed modules for)",
    )
    vf.add_argument(
        "--image",
        type=Path,
        metavar="FILE",
        help="the kernel image to boot (default: ROOT/boot/vmlinuz-KVER, or the tree's bzImage)",
    )


def _tool_verbs(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """verify, doctor, import-dkms, clean, cache."""
    _verify_verb(verbs)
    _export_verb(verbs)
    dr = verbs.add_parser("doctor")
    dr.add_argument(
        "-k",
        "--kernel",
        metavar="KVER",
        action="append",
        help="check this kernel only (repeatable; default: every kernel)",
    )

    im = verbs.add_parser("import-dkms")
    im.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
    im.add_argument(
        "--keep-dkms",
        action="store_true",
        help="leave DKMS's records where they are (DKMS then still builds "
        "these packages for new kernels too)",
    )

    c = verbs.add_parser("clean")
    c.add_argument("name", nargs="?", metavar="NAME")
    c.add_argument("-k", "--kernel", metavar="KVER")
    c.add_argument("--all", action="store_true", help="every package and kernel")

    cache = verbs.add_parser("cache")
    cverbs = cache.add_subparsers(dest="cache_verb", metavar="ACTION", required=True)
    for name, text in (
        ("show", "each namespace with its size and file count"),
        ("prune", "apply the size and age policy now"),
    ):
        _setting_args(
            cverbs.add_parser(name, help=text, parents=[common], allow_abbrev=False),
            f"cache {name}",
        )


def _root_dir(text: str) -> Path:
    if not text:  # Path("") is the current dir: never what a caller meant
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def _global_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root",
        type=_root_dir,
        metavar="DIR",
        help="treat DIR as / (staging, packaging, tests; default: $EXTMOD_ROOT, else /)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="config file (default ROOT/etc/extmod/config.toml)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="echo make output")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and results")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _kernel_args(p: argparse.ArgumentParser, all_flag: bool = False) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "-k",
        "--kernel",
        metavar="KVER",
        action="append",
        default=[],
        help="kernel release under ROOT/lib/modules (repeatable; default: the running kernel)",
    )
    g.add_argument("--kernel-dir", type=Path, metavar="DIR", help="a prepared kernel tree")
    if all_flag:
        g.add_argument("--all", action="store_true", help="every kernel it is built for")


def _setting_args(p: argparse.ArgumentParser, verb: str) -> None:
    """The options of the settings table (settings.SETTINGS) this verb takes."""
    for s in settings.SETTINGS:
        if s.flag and verb in s.verbs:
            p.add_argument(
                *s.aliases,
                s.flag,
                dest=s.field,
                metavar=s.metavar,
                choices=s.choices,
                help=f"{s.help} [{s.key}]",
            )


def _force_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force", action="store_true", help="build again even if an identical build is recorded"
    )
