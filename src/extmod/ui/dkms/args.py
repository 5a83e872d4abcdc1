"""DKMS 3.0.10's command line as data: its actions, its options (dkms.in's option loop,
read_arg), the parsed ``Args``, the ``DkmsExit`` of a failure, framework.conf."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from extmod import __version__
from extmod.core import run, settings, verbs
from extmod.core.paths import release_problem

# The newest DKMS whose command line this is (Debian 13's); the Debian package Provides it.
# ``[dkms] version`` chooses an older one (settings.DKMS_VERSIONS).
DKMS_VERSION = settings.DKMS_VERSIONS[0]

# Every action of dkms: the verb table's (core/verbs.py).
ACTIONS = verbs.dkms_actions()

# Options taking a value (dkms's read_arg: "--opt=value" or "--opt value"); the key is the
# option as dkms matches it, a prefix for the long ones (``--module*``).
_VALUED = {
    "-m": "module",
    "--module": "module",
    "-v": "version",
    "-k": "kernel",
    "--kernelver": "kernel",
    "--templatekernel": "template_kernel",
    "-c": "conf",
    "--dkmstree": "dkms_tree",
    "--sourcetree": "source_tree",
    "--installtree": "install_tree",
    "--config": "kernel_config",
    "--archive": "archive",
    "--arch": "arch",
    "-a": "arch",
    "--kernelsourcedir": "kernel_source_dir",
    "--directive": "directive",
    "-j": "jobs",
}
_FLAGS = {
    "--binaries-only": "binaries_only",
    "--source-only": "source_only",
    "--force": "force",
    "--force-version-override": "force_version_override",
    "--all": "all",
    "--verbose": "verbose",
    "--rpm_safe_upgrade": "rpm_safe_upgrade",
    "--symlink-modules": "symlink_modules",
    "--no-depmod": "no_depmod",
    "--modprobe-on-install": "modprobe_on_install",
    "--debug": "debug",
    "--quiet": "quiet",
    "-q": "quiet",
}
_DEPRECATED = ("--no-initrd", "--no-clean-kernel", "--no-prepare-kernel")

USAGE = f"""Usage: dkms [action] [options]
  [action]  = {{ {" | ".join(ACTIONS)} }}
  [options] = [-m module] [-v module-version] [-k kernel-version] [-a arch]
              [-c dkms.conf-location] [-q] [--force] [--all]
              [--templatekernel=kernel] [--config=kernel-.config-location]
              [--archive=tarball-location] [--kernelsourcedir=source-location]
              [--binaries-only] [--source-only] [--verbose] [--dkmstree=DIR]
              [--sourcetree=DIR] [--installtree=DIR] [--no-depmod]
              [--modprobe-on-install] [-j number] [--version]
(extmod {__version__} answering as dkms {DKMS_VERSION}; see 'extmod --help')"""


class DkmsExit(Exception):
    """End the command with DKMS's exit code and message ("Error! ..." on stderr)."""

    def __init__(self, code: int, *lines: str, usage: bool = False, warn: bool = False):
        super().__init__(" ".join(lines))
        self.code = code
        self.lines = lines
        self.usage = usage
        self.warn = warn  # said as dkms's diewarn says it: "Warning: ...", no blank line


@dataclass
class Args:
    action: str = ""
    module: str = ""
    version: str = ""
    kernels: list[str] = field(default_factory=list)
    arches: list[str] = field(default_factory=list)
    source_dir: str = ""  # a dir (or its dkms.conf) named on the command line
    values: dict[str, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def opt(self, name: str) -> str:
        return self.values.get(name, "")


def parse(argv: Sequence[str]) -> Args:
    """dkms 3.0.10's option loop; raises DkmsExit where it dies (same codes)."""
    a = Args()
    i = 0
    while i < len(argv):
        word = argv[i]
        key = _valued_key(word)
        if key is not None:
            if "=" in word:
                value = word.split("=", 1)[1]
            else:
                i += 1
                value = argv[i] if i < len(argv) else ""
            _take_value(a, _VALUED[key], value)
        elif word in ("--version", "-V"):
            a.flags.add("version")
            return a  # dkms prints its version and exits there
        elif word.startswith("-"):
            _flag(a, word)
        else:
            _positional(a, word)
        i += 1
    _check(a)
    if len(a.arches) == 1 and len(a.kernels) > 1:
        a.arches *= len(a.kernels)
    return a


def _flag(a: Args, word: str) -> None:
    if word in _FLAGS:
        a.flags.add(_FLAGS[word])
    elif word in _DEPRECATED:
        a.warnings.append(f"Deprecated feature: {word}")
    else:
        raise DkmsExit(2, f"Unknown option: {word}", usage=True)


def _positional(a: Args, word: str) -> None:
    """An action, a source dir (or its dkms.conf), an archive, or NAME[/VERSION]."""
    if word in ACTIONS:
        if a.action:
            raise DkmsExit(4, "Cannot specify more than one action.")
        a.action = word
    elif os.path.isfile(word) and word.endswith("dkms.conf"):
        a.source_dir = os.path.dirname(word) or "."
    elif os.path.isdir(word) and os.path.isfile(os.path.join(word, "dkms.conf")):
        a.source_dir = word
    elif os.path.isfile(word):
        a.values["archive"] = word
    elif not a.module:
        _module_version(a, word)
    else:
        a.warnings.append(f"I do not know how to handle {word}.")


def _check(a: Args) -> None:
    """dkms's sanity checks after the loop."""
    if {"binaries_only", "source_only"} <= a.flags:
        raise DkmsExit(
            8, "You have specified both --binaries-only and --source-only.", "You cannot do this."
        )
    if len(a.arches) > 1 and len(a.arches) != len(a.kernels):
        raise DkmsExit(
            1,
            "If more than one arch is specified on the command line, then "
            "there must be an equal number of kernel versions also specified "
            "(1:1 relationship).",
        )
    if a.kernels and "all" in a.flags:
        raise DkmsExit(
            2, "You cannot specify a kernel version and also specify --all on the command line."
        )
    if a.arches and "all" in a.flags:
        raise DkmsExit(3, "You cannot specify an arch and also specify --all on the command line.")


def _valued_key(word: str) -> str | None:
    if word in _VALUED:
        return word
    for key in _VALUED:
        if key.startswith("--") and word.startswith(key + "="):
            return key
        if len(key) == 2 and word.startswith(key + "="):  # -k=6.1.0 (read_arg allows it)
            return key
    return None


def _take_value(a: Args, name: str, value: str) -> None:
    if name == "module":
        _module_version(a, value)
    elif name == "version":
        a.version = value
    elif name == "kernel":
        kver, slash, arch = value.partition("/")
        if why := release_problem(kver):  # extmod's own check: it names dirs it removes
            raise DkmsExit(2, f"Invalid kernel version {kver!r}: {why}")
        a.kernels.append(kver)
        if slash:
            a.arches.append(arch)
    elif name == "arch":
        a.arches.append(value)
    else:
        a.values[name] = value


def _module_version(a: Args, text: str) -> None:
    name, slash, version = text.partition("/")
    a.module = name
    if slash:
        a.version = version


# -- /etc/dkms/framework.conf ------------------------------------------------------------
FRAMEWORK_VARIABLES = (
    "source_tree",
    "dkms_tree",
    "install_tree",
    "parallel_jobs",
    "sign_file",
    "mok_signing_key",
    "mok_certificate",
    "autoinstall_all_kernels",
    "modprobe_on_install",
    "post_transaction",
    "build_environment",
    "try_sign_modules",
)


def read_framework(etc_dkms: Path) -> dict[str, str]:
    """The settings of framework.conf and framework.conf.d/*.conf that extmod honours,
    read as DKMS reads them (sourced by bash, in order; later files win). ``$kernelver``
    in sign_file stays as written: it is the target kernel's release, per build."""
    files = [etc_dkms / "framework.conf", *sorted((etc_dkms / "framework.conf.d").glob("*.conf"))]
    files = [f for f in files if f.is_file()]
    if not files:
        return {}
    script = (
        "kernelver='$kernelver'\n"
        'for f in "$@"; do . "$f" >/dev/null 2>&1 || exit 9; done\n'
        + "".join(f'printf "%s\\0" "${{{v}}}"\n' for v in FRAMEWORK_VARIABLES)
    )
    try:
        res = run.query(["bash", "-c", script, "framework", *map(str, files)], timeout=10)
    except subprocess.TimeoutExpired:
        raise DkmsExit(1, f"{files[0]}: reading it took over 10 s") from None
    if res.returncode != 0:
        raise DkmsExit(
            1, f"{' '.join(map(str, files))}: bash could not read it (exit {res.returncode})"
        )
    values = res.stdout.decode("utf-8", "replace").split("\0")
    return {k: v for k, v in zip(FRAMEWORK_VARIABLES, values, strict=False) if v}


# -- the command -------------------------------------------------------------------------
