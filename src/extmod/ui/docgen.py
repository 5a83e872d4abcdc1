"""The man page and the bash and zsh completions, generated from the argument parser (so
they cannot drift from it; a test regenerates them and compares).

    python -m extmod.ui.docgen DIR   writes DIR/man/extmod.8, DIR/completions/extmod.bash and
                                  DIR/completions/_extmod, and makes the generated blocks of
                                  DIR/docs again (``ui/docblocks.py``)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extmod import __version__
from extmod.core.errors import EXIT_CODES
from extmod.core.settings import SETTINGS
from extmod.ui import argv, docblocks


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    metavar: str | None  # None: a flag that takes no value
    help: str
    choices: tuple[str, ...]


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    options: tuple[Option, ...]
    positionals: tuple[str, ...]  # metavars
    sub: tuple[Verb, ...] = ()


def _options(p: argparse.ArgumentParser, skip: set[str]) -> tuple[Option, ...]:
    out = []
    for a in p._actions:
        if not a.option_strings or a.help == argparse.SUPPRESS or set(a.option_strings) & skip:
            continue
        takes = a.nargs != 0
        metavar = (a.metavar or a.dest.upper()) if takes else None
        out.append(
            Option(
                tuple(a.option_strings),
                str(metavar) if metavar else None,
                a.help or "",
                tuple(map(str, a.choices or ())),
            )
        )
    return tuple(out)


def _subparsers(p: argparse.ArgumentParser) -> dict[str, Any]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return {
                name: (sp, next((c.help for c in a._choices_actions if c.dest == name), ""))
                for name, sp in a.choices.items()
            }
    return {}


def model() -> tuple[tuple[Option, ...], tuple[Verb, ...]]:
    """(global options, verbs) as the parser has them."""
    top = argv.parser()
    global_opts = _options(top, set())
    global_flags = {f for o in global_opts for f in o.flags} | {"-h", "--help"}
    verbs = []
    for name, (sp, text) in _subparsers(top).items():
        subs = tuple(
            Verb(n, t or "", _options(s, global_flags), ()) for n, (s, t) in _subparsers(sp).items()
        )
        positionals = tuple(
            str(a.metavar or a.dest)
            for a in sp._actions
            if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
        )
        verbs.append(Verb(name, text or "", _options(sp, global_flags), positionals, subs))
    return global_opts, tuple(verbs)


# -- man page --------------------------------------------------------------------------------
def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln.startswith((".", "'")) else ln for ln in text.split("\n"))


def _opt_roff(o: Option) -> str:
    flags = ", ".join(f"\\fB{_roff(f)}\\fR" for f in o.flags)
    arg = f" \\fI{_roff(o.metavar)}\\fR" if o.metavar else ""
    choices = f" ({_roff(', '.join(o.choices))})" if o.choices and o.metavar else ""
    return f".TP\n{flags}{arg}\n{_roff(o.help)}{choices}\n"


def manpage() -> str:
    global_opts, verbs = model()
    out = [
        f'.TH EXTMOD 8 "" "extmod {__version__}" "System Administration"',
        ".SH NAME",
        "extmod \\- build, sign, install and track out\\-of\\-tree Linux kernel "
        "modules for every installed kernel",
        ".SH SYNOPSIS",
        ".B extmod\n[\\fB\\-\\-root\\fR \\fIDIR\\fR] [\\fB\\-\\-config\\fR \\fIFILE\\fR] "
        "[\\fB\\-v\\fR|\\fB\\-q\\fR] [\\fB\\-\\-json\\fR] \\fIVERB\\fR ...",
        ".SH DESCRIPTION",
        _roff(
            "extmod does what DKMS does (it reads dkms.conf packages as they are) and "
            "builds each kernel's modules with that kernel's own toolchain: gcc, or "
            "clang and ld.lld for LLVM kernels, with a ThinLTO cache kept outside the "
            "kernel tree, bounded, and removed by extmod clean. Verbs are named as in "
            "DKMS. A kernel is -k KVER (its build tree is ROOT/lib/modules/KVER/build) "
            "or --kernel-dir DIR."
        ),
        ".SH GLOBAL OPTIONS",
        "These go before or after the verb.",
    ]
    out += [_opt_roff(o).rstrip("\n") for o in global_opts]
    out.append(".SH VERBS")
    for v in verbs:
        args = " ".join(f"\\fI{_roff(a)}\\fR" for a in v.positionals)
        out.append(f".SS {_roff(v.name)} {args}".rstrip())
        out.append(_roff(v.help[:1].upper() + v.help[1:] + "."))
        out += [_opt_roff(o).rstrip("\n") for o in v.options]
        for s in v.sub:
            out.append(f".TP\n\\fB{_roff(v.name)} {_roff(s.name)}\\fR\n{_roff(s.help)}")
    out += _reference_sections()
    return "\n".join(out) + "\n"


def _reference_sections() -> list[str]:
    """CONFIGURATION (the settings table), ENVIRONMENT, EXIT STATUS, FILES, SEE ALSO."""
    out: list[str] = []
    out.append(".SH CONFIGURATION")
    out.append(
        _roff(
            "ROOT/etc/extmod/config.toml (or --config FILE). Each setting can also "
            "be given by its environment variable; command-line options win over "
            "the environment, which wins over the file."
        )
    )
    for setting in SETTINGS:
        env = f" (\\fB{_roff(setting.env)}\\fR)" if setting.env else ""
        default = "" if setting.default is None else f" Default: {_roff(str(setting.default))}."
        out.append(f".TP\n\\fB{_roff(setting.key)}\\fR{env}\n{_roff(setting.help)}{default}")
    out.append(".SH ENVIRONMENT")
    out.append(
        ".TP\n\\fBEXTMOD_ROOT\\fR\nThe default of \\fB\\-\\-root\\fR (how the kernel "
        "hooks are run in a staged root)."
    )
    out.append(
        ".TP\n\\fBDPKG_ROOT\\fR\nThe Debian hooks pass it on as "
        "\\fB\\-\\-root\\fR (dpkg \\-\\-root sets it)."
    )
    out.append(".SH EXIT STATUS")
    out += [f".TP\n{code}\n{_roff(text)}" for code, text in EXIT_CODES]
    out.append(".SH FILES")
    for path, text in (
        (
            "/var/lib/extmod",
            "the state: packages, builds, installs, locks, "
            "journal, signing keys (keys/mok.key, mok.pub)",
        ),
        ("/etc/extmod/config.toml", "the config file"),
        ("/etc/dkms", "dkms.conf override files, read as DKMS reads them"),
        ("/usr/src/NAME\\-VERSION", "package sources"),
    ):
        out.append(f".TP\n{path}\n{_roff(text)}")
    out.append(
        ".SH SEE ALSO\n\\fBdkms\\fR(8), \\fBkernel\\-install\\fR(8), "
        "\\fBalpm\\-hooks\\fR(5), \\fBmokutil\\fR(1)"
    )
    return out


# -- completions -----------------------------------------------------------------------------
# Values completed from the machine: kernel releases, added package names, directories.
_KERNEL_FLAGS = {"-k", "--kernel"}
_DIR_METAVARS = {"DIR", "PATH", "FILE"}


def _value_kind(o: Option) -> str:
    if o.choices:
        return "choices"
    if set(o.flags) & _KERNEL_FLAGS:
        return "kernel"
    if o.metavar in _DIR_METAVARS or (o.metavar or "").endswith("DIR"):
        return "path"
    return "none"


def _bash_value_cases(global_opts: tuple[Option, ...], verbs: tuple[Verb, ...]) -> list[str]:
    """The ``case $prev`` arms: what completes after an option that takes a value."""
    lines = []
    by_kind: dict[str, set[str]] = {}
    choice_cases: dict[str, tuple[str, ...]] = {}
    for o in (
        *global_opts,
        *(o for v in verbs for o in v.options),
        *(o for v in verbs for s in v.sub for o in s.options),
    ):
        kind = _value_kind(o)
        if kind == "choices":
            for f in o.flags:
                choice_cases[f] = o.choices
        elif kind != "none" or o.metavar:
            by_kind.setdefault(kind, set()).update(o.flags)
    for f, choices in sorted(choice_cases.items()):
        lines.append(
            f"    {f}) COMPREPLY=($(compgen -W '{' '.join(choices)}' -- \"$cur\")); return ;;"
        )
    actions = {
        "kernel": 'COMPREPLY=($(_extmod_kernels "$cur")); return ;;',
        "path": 'COMPREPLY=($(compgen -f -- "$cur")); return ;;',
        "none": "return ;;",
    }
    for kind, action in actions.items():
        if by_kind.get(kind):
            lines.append(f"    {'|'.join(sorted(by_kind[kind]))}) {action}")
    return lines


def bash() -> str:
    global_opts, verbs = model()
    lines = [
        "# bash completion for extmod (generated by extmod.ui.docgen from the parser)",
        '_extmod_kernels() { local r="${EXTMOD_ROOT:-}"; '
        'compgen -W "$(command ls "$r/lib/modules" 2>/dev/null)" -- "$1"; }',
        '_extmod_packages() { local r="${EXTMOD_ROOT:-}"; '
        'compgen -W "$(command ls "$r/var/lib/extmod/packages" 2>/dev/null)" '
        '-- "$1"; }',
        "_extmod() {",
        "    local cur prev verb i",
        "    cur=${COMP_WORDS[COMP_CWORD]}",
        "    prev=${COMP_WORDS[COMP_CWORD-1]}",
        "    verb=",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        case ${COMP_WORDS[i]} in",
        "        -*) ;;",
        f"        {'|'.join(v.name for v in verbs)}) verb=${{COMP_WORDS[i]}}; break ;;",
        "        esac",
        "    done",
        "    case $prev in",
    ]
    lines += _bash_value_cases(global_opts, verbs)
    lines += [
        "    esac",
        "    case $verb in",
        f"    '') COMPREPLY=($(compgen -W '{' '.join(v.name for v in verbs)} "
        f'{" ".join(f for o in global_opts for f in o.flags)}\' -- "$cur")) ;;',
    ]
    after_verb = [o for o in global_opts if "--version" not in o.flags]
    for v in verbs:
        words = [f for o in (*v.options, *after_verb) for f in o.flags]
        words += [s.name for s in v.sub]
        extra = ""
        if any("NAME" in a for a in v.positionals):
            extra += ' $(_extmod_packages "$cur")'
        if any("SRC_DIR" in a for a in v.positionals):
            extra += ' $(compgen -d -- "$cur")'
        if "KVER" in v.positionals:
            extra += ' $(_extmod_kernels "$cur")'
        lines.append(
            f"    {v.name}) COMPREPLY=($(compgen -W '{' '.join(words)}' -- \"$cur\"){extra}) ;;"
        )
    lines += ["    esac", "}", "complete -F _extmod extmod", ""]
    return "\n".join(lines)


def _zsh_spec(o: Option) -> str:
    text = o.help.replace("'", "'\\''").replace("[", "(").replace("]", ")").replace(":", " ")
    text = text.split("(")[0].strip() or o.flags[-1]
    kind = _value_kind(o)
    action = ""
    if o.metavar:
        action = {
            "choices": f":{o.metavar}:({' '.join(o.choices)})",
            "kernel": f":{o.metavar}:_extmod_kernels",
            "path": f":{o.metavar}:_files",
        }.get(kind, f":{o.metavar}: ")
    if len(o.flags) > 1:
        return f"'({' '.join(o.flags)})'{{{','.join(o.flags)}}}'[{text}]{action}'"
    return f"'{o.flags[0]}[{text}]{action}'"


def zsh() -> str:
    global_opts, verbs = model()
    lines = [
        "#compdef extmod",
        "# zsh completion for extmod (generated by extmod.ui.docgen from the parser)",
        "_extmod_kernels() { local -a k; k=(${EXTMOD_ROOT:-}/lib/modules/*(N:t)); "
        "_describe kernel k; }",
        "_extmod_packages() { local -a p; "
        "p=(${EXTMOD_ROOT:-}/var/lib/extmod/packages/*(N:t)); _describe package p; }",
        "_extmod() {",
        "    local curcontext=$curcontext state line",
        "    local -a verbs",
        "    verbs=(",
    ]
    for v in verbs:
        lines.append(f"        '{v.name}:{v.help.replace(chr(39), '')}'")
    lines += ["    )", "    _arguments -C \\"]
    lines += [f"        {_zsh_spec(o)} \\" for o in global_opts]
    lines += [
        "        '1:verb:->verb' \\",
        "        '*::arg:->args'",
        "    case $state in",
        "    verb) _describe verb verbs ;;",
        "    args)",
        "        case $words[1] in",
    ]
    after_verb = [o for o in global_opts if "--version" not in o.flags]
    for v in verbs:
        specs = [_zsh_spec(o) for o in (*v.options, *after_verb)]
        if v.sub:
            specs.append(f"'1:action:({' '.join(s.name for s in v.sub)})'")
        elif any("NAME" in a for a in v.positionals):
            both = any("SRC_DIR" in a for a in v.positionals)
            action = (
                '_alternative "p:package:_extmod_packages" "d:dir:_files -/"'
                if both
                else "_extmod_packages"
            )
            specs.append(f"'*:package:{action}'")
        elif "KVER" in v.positionals:
            specs.append("'1:kernel:_extmod_kernels'")
        elif v.positionals:
            specs.append(f"'*:{v.positionals[0]}: '")
        body = " \\\n                ".join(specs)
        lines.append(f"        {v.name}) _arguments \\\n                {body} ;;")
    lines += ["        esac ;;", "    esac", "}", '_extmod "$@"', ""]
    return "\n".join(lines)


FILES = {"man/extmod.8": manpage, "completions/extmod.bash": bash, "completions/_extmod": zsh}


def write(top: Path) -> list[Path]:
    written = []
    for rel, make in FILES.items():
        dest = top / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(make())
        written.append(dest)
    for doc in docblocks.documents(top):  # the generated blocks of docs/
        text = doc.read_text()
        if (new := docblocks.refresh(text)) != text:
            doc.write_text(new)
        written.append(doc)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(path)
