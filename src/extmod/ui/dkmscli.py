"""``dkms``: DKMS 3.x's command line, answered by extmod's engine (issue 12).

A thin front. It parses the command line the way dkms 3.0.10 does (its option loop at the
end of dkms.in: ``-m N -v V``, ``N/V``, ``-k KVER[/ARCH]``, ``--opt=value`` and
``--opt value``, the action anywhere among them), then calls the same ``lifecycle.Session``
the ``extmod`` verbs call. What scripts read is DKMS's: the ``status`` line format
(``do_status``) and the exit codes of the situations scripts test for (77 for a
BUILD_EXCLUSIVE skip, 3 for a package not added, 0 for "already built/installed, skip").
The packages, builds and installs are extmod's state tree: ``extmod status`` and
``dkms status`` read the same records.

Where DKMS's trees go: ``--dkmstree`` is extmod's state dir, ``--sourcetree`` its /usr/src,
``--installtree`` where modules are installed (kernels are still found at
/lib/modules/KVER/build, as DKMS finds them). ``EXTMOD_ROOT`` stages the whole root.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from extmod import __version__
from extmod.core import atomic, config, paths, run
from extmod.core.errors import (
    BuildError,
    ExcludedError,
    ExtmodError,
    KernelError,
    LoadCheckError,
    ToolchainError,
    UserError,
)
from extmod.ops import freshness, installer, lifecycle, migrate, plan, registry
from extmod.source import package
from extmod.store.state import Added, State
from extmod.target import kernel, signing
from extmod.target.kernel import Kernel

# The DKMS whose command line this is (Debian 12's); the Debian package Provides it.
DKMS_VERSION = "3.0.10"

ACTIONS = (
    "add",
    "build",
    "install",
    "uninstall",
    "unbuild",
    "remove",
    "status",
    "autoinstall",
    "match",
    "mktarball",
    "ldtarball",
    "generate_mok",
    "kernel_postinst",
    "kernel_prerm",
)

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

    def __init__(self, code: int, *lines: str, usage: bool = False):
        super().__init__(" ".join(lines))
        self.code = code
        self.lines = lines
        self.usage = usage


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
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = False
    try:
        a = parse(argv)
        quiet = "quiet" in a.flags
        if "version" in a.flags:
            print(f"dkms-{DKMS_VERSION}-extmod-{__version__}")
            return 0
        for w in a.warnings:
            print(f"Warning: {w}", file=sys.stderr)
        if not a.action and "archive" not in a.values:
            # dkms prints this and the usage, and exits 0; a usage error is 2 here
            raise DkmsExit(2, 'Unknown action specified: ""', usage=True)
        with run.children_end_with_us():
            return Front(a).run()
    except DkmsExit as e:
        if e.lines:
            print("Error! " + "\n".join(e.lines), file=sys.stderr)
        if e.usage:
            print(USAGE, file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("dkms (extmod): interrupted", file=sys.stderr)
        return 130
    except ExtmodError as e:
        print(f"Error! {e}", file=sys.stderr)
        return 1
    except Exception:
        if not quiet and os.environ.get("EXTMOD_DEBUG"):
            raise
        print(
            f"Error! internal error in extmod: {sys.exc_info()[1]!r} (rerun with "
            f"EXTMOD_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


class Front:
    def __init__(self, a: Args):
        self.a = a
        self.quiet = "quiet" in a.flags
        root_env = os.environ.get("EXTMOD_ROOT")
        base = paths.for_invocation(Path(root_env) if root_env else None, os.environ, 0)
        fw = read_framework(base.etc_dkms)
        self.framework = fw
        state_dir = self._tree("dkms_tree", fw, "/var/lib/dkms")
        self.paths = paths.Paths(
            root=base.root,
            state_dir=state_dir or base.state_dir,
            default_cache_dir=(state_dir / "thinlto-cache")
            if state_dir
            else base.default_cache_dir,
            config_file=base.config_file,
            install_tree=self._tree("install_tree", fw, "/lib/modules"),
            source_dir=self._tree("source_tree", fw, "/usr/src"),
        )
        self.staged = root_env is not None or state_dir is not None
        flags = {
            "build.jobs": a.opt("jobs") or fw.get("parallel_jobs"),
            "sign.key": fw.get("mok_signing_key"),
            "sign.cert": fw.get("mok_certificate"),
            "sign.file": fw.get("sign_file"),
        }
        if flags["build.jobs"] == "0":
            flags["build.jobs"] = None  # dkms: -j0 is plain -j
        try:
            self.config = config.load(self.paths.config_file, flags=flags, environ=os.environ)
        except UserError as e:
            raise DkmsExit(1, str(e)) from None
        self.modprobe = "modprobe_on_install" in a.flags or bool(fw.get("modprobe_on_install"))

    def _tree(self, name: str, fw: dict[str, str], default: str) -> Path | None:
        """A tree given by option or framework.conf; None: extmod's own place for it
        (DKMS's default names extmod's own place, too)."""
        value = self.a.opt(name) or fw.get(name, "")
        if not value or value.rstrip("/") == default:
            return None
        return Path(value).absolute()

    # -- output ---------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def out(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def session(self) -> lifecycle.Session:
        return lifecycle.Session(
            self.config,
            self.paths,
            self.say,
            echo="verbose" in self.a.flags and not self.quiet,
            force="force" in self.a.flags,
            depmod="no_depmod" not in self.a.flags,
        )

    # -- dispatch -------------------------------------------------------------------------
    def run(self) -> int:
        action = self.a.action or "ldtarball"  # a bare archive: dkms loads it
        if action == "status":
            for line in self.status_lines():
                print(line)
            return 0
        if action == "generate_mok":
            return self.generate_mok()
        self._check_privilege(action)
        s = self.session()
        try:
            installer.recover(s)
            verb: Callable[[lifecycle.Session], int] = getattr(self, "do_" + action)
            return verb(s)
        finally:
            for kver in installer.finish(s):
                self.say(f"depmod {kver}")

    def _check_privilege(self, action: str) -> None:
        """dkms's check_root and check_rw_dkms_tree (exit 1)."""
        if os.geteuid() == 0:
            return
        rooted = ("install", "uninstall", "autoinstall", "match", "kernel_postinst", "kernel_prerm")
        if action in rooted and not self.staged:
            raise DkmsExit(1, "You must be root to use this command.")
        tree = self.paths.state_dir
        probe = tree if tree.exists() else tree.parent
        if not os.access(probe, os.W_OK):
            raise DkmsExit(1, f"No write access to DKMS tree at {tree}")

    # -- which package, which kernels ---------------------------------------------------
    def need_module_version(self, action: str) -> tuple[str, str]:
        if self.a.module and self.a.version:
            return self.a.module, self.a.version
        raise DkmsExit(
            1,
            "Arguments <module> and <module-version> are not specified.",
            f"Usage: {action} <module>/<module-version> or",
            f"       {action} -m <module>/<module-version> or",
            f"       {action} -m <module> -v <module-version>",
        )

    def added_or_die(self, s: lifecycle.Session, name: str, version: str) -> Added:
        found = s.state.find_added(name, version)
        if found is None:
            raise DkmsExit(
                3, f"The module/version combo: {name}-{version} is not located in the DKMS tree."
            )
        return found

    def kernel_pairs(
        self, s: lifecycle.Session | None = None, added: Added | None = None
    ) -> list[tuple[str, str]]:
        """dkms's setup_kernels_arches: -k (with -a), --all (every kernel the package is
        built for), else the running kernel; the arch defaults to the machine's."""
        if "all" in self.a.flags:
            assert s is not None and added is not None
            return [(b.kver, b.arch) for b in s.state.builds(added.name, added.version)]
        kvers = self.a.kernels or [os.uname().release]
        arches = self.a.arches or [os.uname().machine]
        if len(arches) == 1:
            arches = arches * len(kvers)
        return list(zip(kvers, arches, strict=True))

    def load_kernel(self, kver: str, arch: str, missing_code: int) -> Kernel:
        ksrc = self.a.opt("kernel_source_dir")
        try:
            k = kernel.load(Path(ksrc).absolute()) if ksrc else kernel.by_release(self.paths, kver)
        except KernelError as e:
            raise DkmsExit(
                missing_code,
                f"Your kernel headers for kernel {kver} cannot be found ({e}).",
                f"Please install the linux-headers-{kver} package "
                f"or use the --kernelsourcedir option to tell DKMS where it's "
                f"located.",
            ) from None
        if arch != k.arch:
            raise DkmsExit(12, f"kernel {kver} is built for {k.arch}, not {arch}")
        if ksrc and k.release != kver:
            k = dataclasses.replace(k, release=kver)
        return k

    def resolve(self, s: lifecycle.Session, action: str) -> Added:
        """The package of build, install, mktarball: from -m/-v, or a source dir named
        on the command line (added first, as dkms's add_source_tree does); build and
        install add /usr/src/NAME-VERSION when it is not added yet (prepare_build)."""
        if self.a.source_dir and not self.a.module:
            return self.add_source(s)
        if self.a.module and not self.a.version:
            versions = s.state.versions_of(self.a.module)
            if len(versions) == 1:  # newer dkms picks the only one; 3.0.10 asks
                return versions[0]
        name, version = self.need_module_version(action)
        found = s.state.find_added(name, version)
        return found if found is not None else self.add_named(s, name, version)

    # -- verbs ----------------------------------------------------------------------------
    def do_add(self, s: lifecycle.Session) -> int:
        if "archive" in self.a.values and not self.a.module:
            return self.do_ldtarball(s)
        if self.a.source_dir and not self.a.module:
            self.add_source(s, fail_if_added=True)
            return 0
        name, version = self.need_module_version("add")
        if s.state.find_added(name, version) is not None:
            raise DkmsExit(
                3,
                f"DKMS tree already contains: {name}-{version}",
                "You cannot add the same module/version combo more than once.",
            )
        self.add_named(s, name, version)
        return 0

    def add_named(self, s: lifecycle.Session, name: str, version: str) -> Added:
        src = self.paths.source_tree / f"{name}-{version}"
        if not src.is_dir():
            raise DkmsExit(
                2, "Could not find module source directory.", f"Directory: {src} does not exist."
            )
        self._conf_allowed(src)
        try:
            added = registry.add(s, f"{name}/{version}")
        except UserError as e:
            raise DkmsExit(8, "Bad conf file.", str(e)) from None
        self.out(
            f"Creating symlink to {src} for {added.ident} (extmod state "
            f"{s.state.package_dir(name, version)})"
        )
        return added

    def add_source(self, s: lifecycle.Session, fail_if_added: bool = False) -> Added:
        src = Path(self.a.source_dir).absolute()
        self._conf_allowed(src)
        try:
            name, version = package.identify(src / "dkms.conf", registry.context(s))
        except UserError as e:
            raise DkmsExit(
                10, "Malformed dkms.conf file. Cannot load source tree.", str(e)
            ) from None
        found = s.state.find_added(name, version)
        if found is not None:
            if fail_if_added:
                raise DkmsExit(
                    3,
                    f"DKMS tree already contains: {name}-{version}",
                    "You cannot add the same module/version combo more than once.",
                )
            return found
        dest = self.paths.source_tree / f"{name}-{version}"
        if "force" in self.a.flags and dest.exists() and dest.resolve() != src.resolve():
            self.out(f"Forcing install of {name}-{version}")
            shutil.rmtree(dest)
        try:
            return registry.add(s, str(src))
        except UserError as e:
            raise DkmsExit(8, "Bad conf file.", str(e)) from None

    def _conf_allowed(self, src: Path) -> None:
        conf = self.a.opt("conf")
        if conf and Path(conf).resolve() != (src / "dkms.conf").resolve():
            raise DkmsExit(
                8,
                f"-c {conf}: extmod reads each package's own dkms.conf "
                f"({src / 'dkms.conf'}); copy the file there instead",
            )

    def do_build(self, s: lifecycle.Session) -> int:
        return self._build_or_install(s, "build")

    def do_install(self, s: lifecycle.Session) -> int:
        return self._build_or_install(s, "install")

    def _build_or_install(self, s: lifecycle.Session, action: str) -> int:
        if "all" in self.a.flags:
            raise DkmsExit(5, f"The action {action} does not support the --all parameter.")
        added = self.resolve(s, action)
        force = "force" in self.a.flags
        for kver, arch in self.kernel_pairs():
            if (
                action == "install"
                and not (self.paths.kernels_dir / kver).is_dir()
                and not self.a.opt("kernel_source_dir")
            ):
                raise DkmsExit(6, "You cannot install a module onto a non-existent kernel.")
            done = (
                s.state.find_installed(kver, arch, added.name)
                if action == "install"
                else s.state.find_built(added.name, added.version, kver, arch)
            )
            if (
                done is not None
                and not force
                and (action == "build" or done.version == added.version)
            ):
                where = "built for" if action == "build" else "installed on"
                self.out(
                    f"Module {added.ident} already {where} kernel {kver} ({arch}), "
                    f"skip. You may override by specifying --force."
                )
                continue
            if self.sourceless(added) and not s.state.find_built(
                added.name, added.version, kver, arch
            ):
                raise DkmsExit(
                    8,
                    f"{added.ident} is a binaries-only package with no modules "
                    f"for {kver} ({arch}): there is no source to build.",
                )
            k = self.load_kernel(kver, arch, missing_code=1)
            self._run_pair(s, added, k, action)
        return 0

    def sourceless(self, added: Added) -> bool:
        """Registered from a binaries-only tarball (``_binaries_only``)."""
        return added.source.parent == self.paths.state_dir / "binaries-only"

    def _run_pair(self, s: lifecycle.Session, added: Added, k: Kernel, action: str) -> None:
        verb = freshness.build_if_needed if action == "build" else installer.install_pair
        try:
            with s.job(added, k):
                verb(s, added, k, None)
        except ExcludedError as e:
            raise DkmsExit(77, f"{e}", "This indicates that it should not be built.") from None
        except (BuildError, ToolchainError) as e:
            raise DkmsExit(
                10, f"Bad return status for module build on kernel: {k.release} ({k.arch})", str(e)
            ) from None
        except LoadCheckError as e:
            raise DkmsExit(6, str(e), "Installation aborted.") from None
        except UserError as e:
            raise DkmsExit(8, "Bad conf file.", str(e)) from None
        except KernelError as e:
            raise DkmsExit(1, str(e)) from None
        for o in s.outcomes:
            if o.kver == k.release and o.ident == added.ident:
                self.out(
                    f"{o.ident}, {o.kver}: {o.action}{' (' + o.detail + ')' if o.detail else ''}"
                )
        s.outcomes.clear()
        if action == "install" and self.modprobe and k.release == os.uname().release:
            self._modprobe(s, added, k)

    def _modprobe(self, s: lifecycle.Session, added: Added, k: Kernel) -> None:
        rec = s.state.find_installed(k.release, k.arch, added.name)
        for f in rec.files if rec else ():
            name = Path(f.path).name.split(".ko")[0]
            try:
                run.capture([run.system_tool("modprobe", "kmod"), name])
            except (run.CommandFailed, ExtmodError) as e:
                self.say(f"Warning: modprobe {name} failed: {str(e).strip()[:200]}")

    def _selected(self, s: lifecycle.Session, action: str) -> tuple[Added, list[str] | None]:
        name, version = self.need_module_version(action)
        added = self.added_or_die(s, name, version)
        if "all" in self.a.flags:
            return added, None
        return added, [k for k, _ in self.kernel_pairs()]

    def do_uninstall(self, s: lifecycle.Session) -> int:
        added, kvers = self._selected(s, "uninstall")
        for kver in (
            kvers if kvers is not None else [r.kver for r in s.state.installs_of(added.name)]
        ):
            rec = next(
                (r for r in s.state.installs_of(added.name, [kver]) if r.version == added.version),
                None,
            )
            if rec is None:
                self.out(
                    f"Module {added.name} {added.version} is not installed for kernel "
                    f"{kver}. Skipping..."
                )
                continue
            installer.uninstall(s, rec)
            self.out(f"{added.ident}, {kver}: uninstalled")
        return 0

    def do_unbuild(self, s: lifecycle.Session) -> int:
        added, kvers = self._selected(s, "unbuild")
        self._note_missing(s, added, kvers)
        installer.unbuild(s, added, kvers)
        self._outcomes(s)
        return 0

    def do_remove(self, s: lifecycle.Session) -> int:
        added, kvers = self._selected(s, "remove")
        self._note_missing(s, added, kvers)
        installer.remove(s, added, kvers)
        if s.state.find_added(added.name, added.version) is None:
            shutil.rmtree(
                self.paths.state_dir / "binaries-only" / f"{added.name}-{added.version}",
                ignore_errors=True,
            )
            self.out(f"Deleting module {added.name}-{added.version} completely from the DKMS tree.")
        self._outcomes(s)
        return 0

    def _note_missing(self, s: lifecycle.Session, added: Added, kvers: list[str] | None) -> None:
        built = {b.kver for b in s.state.builds(added.name, added.version)}
        for kver in kvers or ():
            if kver not in built:
                self.out(
                    f"Module {added.name} {added.version} is not built for kernel "
                    f"{kver}. Skipping..."
                )

    def _outcomes(self, s: lifecycle.Session) -> None:
        for o in s.outcomes:
            self.out(f"{o.ident}{', ' + o.kver if o.kver else ''}: {o.action}")
        s.outcomes.clear()

    def do_autoinstall(self, s: lifecycle.Session) -> int:
        kernels = []
        for kver, arch in self.kernel_pairs():
            kernels.append(self.load_kernel(kver, arch, missing_code=11))
        plan.autoinstall(s, kernels)
        failed = [o for o in s.outcomes if o.exit_code]
        self._outcomes(s)
        if failed:
            raise DkmsExit(
                11,
                "One or more modules failed to install during autoinstall.",
                "Refer to previous errors for more information.",
            )
        return 0

    def do_kernel_postinst(self, s: lifecycle.Session) -> int:
        kver, _ = self._one_kernel("kernel_postinst")
        if not (self.paths.kernels_dir / kver / "build").exists():
            self.say(
                f"dkms (extmod): {kver}: no headers yet "
                f"({self.paths.kernels_dir / kver / 'build'}): nothing built; the "
                f"modules are built when the headers are installed"
            )
            return 0
        return self.do_autoinstall(s)

    def do_kernel_prerm(self, s: lifecycle.Session) -> int:
        kver, _ = self._one_kernel("kernel_prerm")
        for added in s.state.all_added():
            installer.unbuild(s, added, [kver])
        self._outcomes(s)
        return 0

    def _one_kernel(self, action: str) -> tuple[str, str]:
        pairs = self.kernel_pairs()
        if len(pairs) != 1:
            raise DkmsExit(
                4,
                f"The action {action} does not support multiple kernel "
                f"version parameters on the command line.",
            )
        if "all" in self.a.flags:
            raise DkmsExit(5, f"The action {action} does not support the --all parameter.")
        return pairs[0]

    def do_match(self, s: lifecycle.Session) -> int:
        kver, arch = self._one_kernel("match")
        template = self.a.opt("template_kernel")
        if not template:
            raise DkmsExit(
                1,
                "Invalid number of parameters passed.",
                "Usage: match --templatekernel=<kernel-version> -k <kernel-version>",
            )
        if template == kver:
            raise DkmsExit(2, "The templatekernel and the specified kernel version are the same.")
        chosen = [
            r
            for r in s.state.all_installed(template)
            if not self.a.module or r.name == self.a.module
        ]
        if self.a.module and not s.state.versions_of(self.a.module):
            raise DkmsExit(3, f"The module: {self.a.module} is not located in the DKMS tree.")
        if not chosen:
            self.out("There is nothing to be done for this match.")
            return 0
        k = self.load_kernel(kver, arch, missing_code=1)
        for rec in chosen:
            added = self.added_or_die(s, rec.name, rec.version)
            self._run_pair(s, added, k, "install")
        return 0

    # -- tarballs (DKMS's layout: make_tarball, load_tarball) -----------------------------
    def do_mktarball(self, s: lifecycle.Session) -> int:
        name, version = self.need_module_version("mktarball")
        added = self.added_or_die(s, name, version)
        pairs = [] if "source_only" in self.a.flags else self.kernel_pairs()
        with tempfile.TemporaryDirectory(prefix="dkms-extmod-") as tmp_name:
            tmp = Path(tmp_name)
            kinds = []
            for kver, arch in pairs:
                built = s.state.find_built(name, version, kver, arch)
                if built is None:
                    raise DkmsExit(
                        6,
                        f"No modules built for {kver} ({arch}).",
                        "Modules must already be in the built state before using mktarball.",
                    )
                dest = tmp / "dkms_main_tree" / kver / arch
                (dest / "module").mkdir(parents=True)
                for m in built.modules:
                    shutil.copyfile(built.dir / "module" / m.file, dest / "module" / m.file)
                if (built.dir / "make.log").is_file():
                    (dest / "log").mkdir()
                    shutil.copyfile(built.dir / "make.log", dest / "log" / "make.log")
                kinds.append(f"kernel{kver}-{arch}")
            if "binaries_only" in self.a.flags:
                b = tmp / "dkms_binaries_only"
                b.mkdir()
                (b / "PACKAGE_NAME").write_text(name + "\n")
                (b / "PACKAGE_VERSION").write_text(version + "\n")
                shutil.copyfile(added.source / "dkms.conf", b / "dkms.conf")
            else:
                shutil.copytree(added.source, tmp / "dkms_source_tree", symlinks=True)
            label = "-".join(kinds) or "source-only"
            if len(label) > 200:
                label = "manykernels"
            target = (
                Path(self.a.opt("archive"))
                if self.a.opt("archive")
                else s.state.package_dir(name, version)
                / "tarball"
                / f"{name}-{version}-{label}.dkms.tar.gz"
            )
            target = target.absolute()
            try:

                def fill(f: BinaryIO, source: Path = tmp) -> None:
                    with tarfile.open(fileobj=f, mode="w:gz") as tar:
                        tar.add(source, arcname=".")

                atomic.write_stream(target, fill)
            except OSError as e:
                raise DkmsExit(
                    9, f"Missing write permissions for {target.parent} ({e.strerror})."
                ) from None
        self.out(f"Tarball location: {target}")
        return 0

    def do_ldtarball(self, s: lifecycle.Session) -> int:
        archive = Path(self.a.opt("archive"))
        if not self.a.opt("archive") or not archive.exists():
            raise DkmsExit(2, f"{archive} does not exist.")
        with tempfile.TemporaryDirectory(prefix="dkms-extmod-") as tmp_name:
            tmp = Path(tmp_name)
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError) as e:
                raise DkmsExit(7, f"{archive} is not a valid DKMS tarball: {e}") from None
            if (tmp / "dkms_source_tree/dkms.conf").is_file():
                conf_dir = tmp / "dkms_source_tree"
            elif (tmp / "dkms_binaries_only/dkms.conf").is_file():
                conf_dir = tmp / "dkms_binaries_only"
            elif not (tmp / "dkms_main_tree").is_dir():
                found = sorted(tmp.rglob("dkms.conf"))
                if not found:
                    raise DkmsExit(
                        3,
                        "Tarball does not appear to be a correctly formed DKMS "
                        "archive. No dkms.conf found within it.",
                    )
                self.a.source_dir = str(found[0].parent)
                self.add_source(s)
                return 0
            else:
                raise DkmsExit(
                    7,
                    "No valid dkms.conf in dkms_source_tree or dkms_binaries_only.",
                    f"{archive} is not a valid DKMS tarball.",
                )
            name, version = package.identify(conf_dir / "dkms.conf", registry.context(s))
            if s.state.find_added(name, version) is not None and "force" not in self.a.flags:
                raise DkmsExit(8, f"{name}-{version} is already added!", "Aborting.")
            self.out(f"Loading tarball for {name}-{version}")
            if conf_dir.name == "dkms_source_tree":
                self.a.source_dir = str(conf_dir)
                added = self.add_source(s)
            else:
                added = self._binaries_only(s, name, version, conf_dir)
            self._load_prebuilt(s, added, tmp / "dkms_main_tree")
        return 0

    def _binaries_only(
        self, s: lifecycle.Session, name: str, version: str, conf_dir: Path
    ) -> Added:
        """A package shipped without source: its dkms.conf, kept in the state tree, is what
        it is registered from (STATE/binaries-only/NAME-VERSION/; DKMS keeps it as
        $dkms_tree/N/V/source/dkms.conf)."""
        src = self.paths.source_tree / f"{name}-{version}"
        if not src.is_dir():
            src = self.paths.state_dir / "binaries-only" / f"{name}-{version}"
            src.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(conf_dir / "dkms.conf", src / "dkms.conf")
        with s.state.lock("packages", s.say):
            added, _ = s.state.add(name, version, src)
        return added

    def _load_prebuilt(self, s: lifecycle.Session, added: Added, main_tree: Path) -> None:
        kernels = {
            k.release: k for k in kernel.find_all(self.paths) if isinstance(k, kernel.Kernel)
        }
        for kdir in sorted(main_tree.iterdir()) if main_tree.is_dir() else []:
            for adir in sorted(kdir.iterdir()):
                mods = (
                    sorted(f for f in (adir / "module").iterdir() if f.is_file())
                    if (adir / "module").is_dir()
                    else []
                )
                if not mods:
                    continue
                if (
                    s.state.find_built(added.name, added.version, kdir.name, adir.name)
                    and "force" not in self.a.flags
                ):
                    self.say(
                        f"Warning: {added.ident} for {kdir.name} ({adir.name}) is "
                        f"already built. Skipping..."
                    )
                    continue
                s.state.drop_built(added.name, added.version, kdir.name, adir.name)
                with s.pair_lock(added.name, kdir.name):
                    migrate.record_build(
                        s,
                        added,
                        migrate.BuildPlan(kdir.name, adir.name, mods),
                        kernels.get(kdir.name),
                    )
                self.out(
                    f"Loading {added.ident} for {kdir.name} ({adir.name}): {len(mods)} modules"
                )

    def postinst(self, tarball_root: str, arch: str) -> int:
        """common.postinst's work (see ``common_postinst``)."""
        name, version = self.a.module, self.a.version
        s = self.session()
        try:
            installer.recover(s)
            if not self._register_for_postinst(s, tarball_root):
                return 2
            added = self.added_or_die(s, name, version)
            kernels = [
                k
                for k in kernel.find_all(self.paths)
                if isinstance(k, kernel.Kernel) and (not arch or k.arch == arch)
            ]
            if not kernels:
                print(
                    f"{name}/{version} is added; no kernel here has headers "
                    f"({self.paths.kernels_dir}/KVER/build): it is built when they are "
                    f"installed"
                )
                return 0
            print(f"Building for {', '.join(k.release for k in kernels)}")
            pairs = self._postinst_pairs(s, added, kernels)
            plan.run_pairs(s, pairs, lambda a, k, p: installer.install_pair(s, a, k, p))
            self._postinst_report(s)
            return 0
        finally:
            for kver in installer.finish(s):
                self.say(f"depmod {kver}")

    def _register_for_postinst(self, s: lifecycle.Session, tarball_root: str) -> bool:
        """From the package's tarball, else from /usr/src; False: the tarball is bad."""
        name, version = self.a.module, self.a.version
        tarball = Path(tarball_root or "/nonexistent") / f"{name}-{version}.dkms.tar.gz"
        if tarball.is_file():
            self.a.values["archive"] = str(tarball)
            self.a.flags.add("force")  # the package's own tarball replaces what was loaded
            try:
                self.do_ldtarball(s)
            except DkmsExit as e:
                print(f"Unable to load DKMS tarball {tarball}: {' '.join(e.lines)}")
                return False
            self.a.flags.discard("force")
        elif (self.paths.source_tree / f"{name}-{version}").is_dir():
            if s.state.find_added(name, version) is None:
                print(f"Loading new {name}-{version} DKMS files...")
                self.add_named(s, name, version)
        else:
            raise DkmsExit(
                2, f"neither {tarball} nor {self.paths.source_tree / f'{name}-{version}'} exists"
            )
        return True

    def _postinst_pairs(
        self, s: lifecycle.Session, added: Added, kernels: list[Kernel]
    ) -> list[tuple[Added, Kernel, package.Package | None]]:
        """The kernels to build for: not those BUILD_EXCLUSIVE rules out, nor, for a
        binaries-only package, those it brought no modules for (each said)."""
        pairs: list[tuple[Added, Kernel, package.Package | None]] = []
        for k in kernels:
            try:
                pkg = s.facts.load(added, k)
            except ExtmodError as e:
                s.failed(added.ident, k.release, e)
                continue
            if pkg.excluded:
                print(f"{added.ident} for {k.release}: skipped ({pkg.excluded})")
            elif self.sourceless(added) and not s.state.find_built(
                added.name, added.version, k.release, k.arch
            ):
                print(
                    f"{added.ident} for {k.release}: skipped (a binaries-only package with "
                    f"no modules for this kernel: it cannot be built here)"
                )
            else:
                pairs.append((added, k, pkg))
        return pairs

    def _postinst_report(self, s: lifecycle.Session) -> None:
        name, version = self.a.module, self.a.version
        for o in s.outcomes:
            if o.kver and o.action == "failed":
                print(f"{o.ident} for {o.kver}: NOT installed: {o.detail}")
            elif o.kver:
                detail = f" ({o.detail})" if o.detail else ""
                print(f"{o.ident} for {o.kver}: {o.action}{detail}")
        if any(o.exit_code for o in s.outcomes):
            print(
                f"{name}/{version}: the package stays configured; see 'dkms status -m "
                f"{name}' and the log named above, then 'dkms install -m {name} -v "
                f"{version} -k KVER' once the cause is fixed"
            )

    # -- status, keys ---------------------------------------------------------------------
    def status_lines(self) -> list[str]:
        """dkms 3.0.10's show_status/do_status: ``N/V: added`` when nothing matching the
        kernel and arch is built; else ``N/V, KVER, ARCH: built|installed``."""
        state = State(self.paths)
        kernels, arches = self.a.kernels, self.a.arches
        pairs = [(k, arches[i] if i < len(arches) else "") for i, k in enumerate(kernels)]
        if not pairs:  # no -k: every kernel, of the arch given if one is
            pairs = [("", arches[0] if arches else "")]
        lines: list[str] = []
        added = sorted(state.all_added(), key=lambda x: (x.name.encode(), x.version.encode()))
        for kver, arch in pairs:
            for a in added:
                if (self.a.module and a.name != self.a.module) or (
                    self.a.version and a.version != self.a.version
                ):
                    continue
                lines += _status_of(state, a, kver, arch)
        return lines

    def generate_mok(self) -> int:
        key, cert = signing.key_pair(self.config, self.paths)
        if key.exists() and cert.exists():
            self.out(f"Signing key: {key}\nPublic certificate (MOK): {cert}")
            return 0
        try:
            signing.ensure_key_pair(key, cert)
        except ExtmodError as e:
            raise DkmsExit(1, str(e)) from None
        self.out(
            f"Signing key: {key}\nPublic certificate (MOK): {cert}\n"
            f"(enroll it with: mokutil --import {cert})"
        )
        return 0


def _status_of(state: State, a: Added, kver: str, arch: str) -> list[str]:
    lines = []
    for b in sorted(
        state.builds(a.name, a.version), key=lambda b: (b.kver.encode(), b.arch.encode())
    ):
        if (kver and b.kver != kver) or (arch and b.arch != arch) or not re.match(r"\d", b.kver):
            continue
        rec = state.find_installed(b.kver, b.arch, a.name)
        installed = rec is not None and rec.version == a.version
        extra = (
            " (original_module exists)"
            if installed and rec is not None and any(f.original for f in rec.files)
            else ""
        )
        lines.append(
            f"{a.name}/{a.version}, {b.kver}, {b.arch}: "
            f"{'installed' if installed else 'built'}{extra}"
        )
    return lines or [f"{a.name}/{a.version}: added"]


# -- /usr/lib/dkms/common.postinst ---------------------------------------------------------
def common_postinst(argv: Sequence[str]) -> int:
    """What every ``*-dkms`` package's postinst runs (dh_dkms:
    ``common.postinst NAME VERSION TARBALL_ROOT ARCH UPGRADE``): register the package from
    its prebuilt tarball or from /usr/src/NAME-VERSION, then build and install it for
    every kernel here that has headers, as one graph under one job budget (DKMS builds for
    the running and the newest kernel only). A build that fails is reported with its
    first error and log, and the package stays configured (exit 0), as extmod's kernel
    hooks do: apt goes on, and ``dkms status``/``extmod status`` show what is missing."""
    name, version, tarball_root, arch = (list(argv) + [""] * 4)[:4]
    if not name or not version:
        print("Need NAME, and VERSION defined\nARCH is optional")
        return 1
    root_env = os.environ.get("EXTMOD_ROOT")
    root = Path(root_env) if root_env else Path("/")
    if (root / "etc/dkms/no-autoinstall").exists():
        print("autoinstall for dkms modules has been disabled.")
        return 0
    a = Args(module=name, version=version)
    try:
        with run.children_end_with_us():
            return Front(a).postinst(tarball_root, _machine_arch(arch))
    except DkmsExit as e:
        print("Error! " + "\n".join(e.lines), file=sys.stderr)
        return e.code
    except ExtmodError as e:
        print(f"Error! {e}", file=sys.stderr)
        return 1


def _machine_arch(deb_arch: str) -> str:
    """The kernel arch of a Debian architecture name (Ubuntu's postinst passes amd64)."""
    return {
        "amd64": "x86_64",
        "i386": "i686",
        "arm64": "aarch64",
        "armhf": "arm",
        "ppc64el": "ppc64le",
    }.get(deb_arch, deb_arch)
