"""What every ``dkms`` action shares: the trees and settings from options and framework.conf,
the session, which package and which kernels, output in DKMS's words."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from extmod.core import config, paths, verbs
from extmod.core.errors import KernelError, MakeFailed, UserError
from extmod.kernel import kernel, signing
from extmod.kernel.kernel import Kernel
from extmod.ops import commands, session
from extmod.ops.session import Added
from extmod.ui.dkms.args import Args, DkmsExit, read_framework

# framework.conf's try_sign_modules (DKMS 3.4 prepare_signing) -> [sign] modules
_SIGN_MODES = {"true": "yes", "false": "no", "not_in_chroot": "not-in-chroot"}


_ALWAYS = ("warning:", "Warning", "waiting for lock", "extmod: error")
_SAID_IN_PLACE = ("POST_ADD", "PRE_INSTALL", "POST_INSTALL", "POST_REMOVE")


def _ver(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


class Front:
    """One dkms command: its parsed options, trees and settings, and the helpers its action
    needs (which package, which kernels, DKMS-worded output)."""

    def __init__(self, a: Args):
        self.a = a
        # lines said around depmod's, which ends every action (DKMS's order of words)
        self.before_depmod: list[str] = []
        self.after_depmod: list[str] = []
        self.quiet = "quiet" in a.flags
        root_env = paths.root_of(os.environ)
        base = paths.for_invocation(root_env, os.environ, 0)
        fw = read_framework(base.etc_dkms)
        self.framework = fw
        state_dir = self._tree("dkms_tree", fw, "/var/lib/dkms")
        self.paths = paths.Paths(
            root=base.root,
            state_dir=state_dir or base.state_dir,
            default_cache_dir=paths.default_cache_dir(state_dir)
            if state_dir
            else base.default_cache_dir,
            config_file=base.config_file,
            install_tree=self._tree("install_tree", fw, "/lib/modules"),
            source_dir=self._tree("source_tree", fw, "/usr/src"),
        )
        self.staged = root_env is not None or state_dir is not None
        flags = {
            # -j, framework.conf, then the environment's $parallel_jobs (dkms 3.2.2 reads
            # it so: run_test.sh exports parallel_jobs=1)
            "build.jobs": a.opt("jobs")
            or fw.get("parallel_jobs")
            or os.environ.get("parallel_jobs"),
            "sign.key": fw.get("mok_signing_key"),
            "sign.cert": fw.get("mok_certificate"),
            "sign.file": fw.get("sign_file"),
        }
        env_file = fw.get("build_environment", "")
        if env_file and os.path.isfile(env_file):  # dkms 3.3: a missing file is no error
            flags["build.environment"] = env_file
        flags["sign.modules"] = _SIGN_MODES.get(fw.get("try_sign_modules", ""))
        if flags["build.jobs"] == "0":
            flags["build.jobs"] = None  # dkms: -j0 is plain -j
        try:
            self.config = config.load(self.paths.config_file, flags=flags, environ=os.environ)
        except UserError as e:
            raise DkmsExit(1, str(e)) from None
        self.modprobe = "modprobe_on_install" in a.flags or bool(fw.get("modprobe_on_install"))
        self.scripts: list[tuple[str, str]] = []  # package scripts that ran, not said yet
        self.signer_said: set[str] = set()  # kernels whose signer's lines were said
        self.confs_read: set[Path] = set()  # dkms.conf files whose notices were said
        # The signing pair as the command found it: one made by it is said (prepare_mok);
        # a pair of each kernel's ($kernelver in its paths) is not looked at
        pair = signing.key_pair(self.config, self.paths)
        self.mok_missing = not any("kernelver" in str(f) for f in pair) and not all(
            f.exists() for f in pair
        )
        # The DKMS this command answers as ([dkms] version): 3.2.2 unless set to 3.0.10.
        self.dkms_version = self.config.dkms_version
        if self.since("3.1"):
            self.paths = dataclasses.replace(self.paths, headers_in_install_tree=True)

    def since(self, release: str) -> bool:
        """Whether the DKMS answered as is ``release`` or newer."""
        return _ver(self.dkms_version) >= _ver(release)

    def _tree(self, name: str, fw: dict[str, str], default: str) -> Path | None:
        """A tree given by option or framework.conf; None: extmod's own place for it
        (DKMS's default names extmod's own place, too)."""
        value = self.a.opt(name) or fw.get(name, "")
        if not value or value.rstrip("/") == default:
            return None
        return Path(value).absolute()

    def post_transaction(self, action: str, s: session.Session) -> None:
        """framework.conf's post_transaction (DKMS 3.2.0): after a remove, unbuild,
        uninstall or install that succeeded, and an autoinstall that installed something,
        bash runs it; its output goes to <dkms tree>/post_transaction.log (emptied first).
        Its failure is said, not the command's."""
        command = self.framework.get("post_transaction", "")
        if not command or action not in (
            "remove",
            "unbuild",
            "uninstall",
            "install",
            "autoinstall",
        ):
            return
        if action == "autoinstall" and "installed" not in s.done:
            return
        if self.a.kernels:  # dkms evaluates framework.conf's values: $kernelver in them
            kver = self.a.kernels[0].split("/")[0]
            command = command.replace("${kernelver}", kver).replace("$kernelver", kver)
        failure = commands.post_transaction(command, self.paths.post_transaction_log)
        commands.sync_dkms_view(s)  # its log, where DKMS keeps it
        self.out(f"Executing post-transaction command...{' failed.' if failure else ' done.'}")
        if failure:
            self.say(f"Warning: {failure}")

    # -- output ---------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def out(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def progress(self, text: str) -> None:
        """A line of extmod's own (``building …``, ``installed …``): DKMS's words stand in
        its place (ui/dkms/words.py), so it and extmod's notes are said only with
        --verbose; warnings and a lock being waited for are always said."""
        if "verbose" in self.a.flags or text.startswith(_ALWAYS):
            self.say(text)

    def new_session(self, words: bool = True) -> session.Session:
        """The action's session; ``words``: DKMS's words stand for extmod's progress lines
        (common.postinst, which is extmod's own, keeps them)."""
        s = session.Session(
            self.config,
            self.paths,
            self.progress if words else self.say,
            echo="verbose" in self.a.flags and not self.quiet,
            force="force" in self.a.flags,
            depmod="no_depmod" not in self.a.flags,
        )
        if words and self.since("3.1"):
            s.scripts_shown = self._script_ran
            s.failure_shown = lambda e: isinstance(e, MakeFailed)  # words.build_failed
        return s

    def _script_ran(self, kind: str, output: str) -> None:
        """A package script ran; POST_ADD's, PRE_INSTALL's and POST_INSTALL's lines wait
        for their place among DKMS's words (words.scripts), the others are said now."""
        self.scripts.append((kind, output))
        if kind not in _SAID_IN_PLACE:
            self.say_scripts(kind)

    def say_scripts(self, *kinds: str) -> None:
        """The scripts of these kinds that ran (all, when none is named), said now."""
        for kind, output in [k for k in self.scripts if not kinds or k[0] in kinds]:
            self.scripts.remove((kind, output))
            self.out(f"Running the {kind.lower()} script:")
            for line in output.splitlines():
                self.out(line)

    def _check_privilege(self, action: str) -> None:
        """dkms's check_root and check_rw_dkms_tree (exit 1)."""
        if os.geteuid() == 0:
            return
        if verbs.of(action).dkms_root and not self.staged:
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

    def added_or_die(self, s: session.Session, name: str, version: str) -> Added:
        found = s.state.find_added(name, version)
        if found is None:
            raise DkmsExit(
                3, f"The module/version combo: {name}-{version} is not located in the DKMS tree."
            )
        return found

    def kernel_pairs(
        self, s: session.Session | None = None, added: Added | None = None
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
        except KernelError:  # dkms names the two places it looked, as here
            kdir = self.paths.kernels_dir / kver
            if missing_code == 1 and self.since("3.1.6"):
                missing_code = 21  # dkms 3.1.6 prepare_kernel: its own code for this
            raise DkmsExit(
                missing_code,
                f"Your kernel headers for kernel {kver} cannot be found at {kdir}/build or "
                f"{kdir}/source.",
                f"Please install the linux-headers-{kver} package "
                f"or use the --kernelsourcedir option to tell DKMS where it's "
                f"located.",
            ) from None
        if arch != k.arch:
            raise DkmsExit(12, f"kernel {kver} is built for {k.arch}, not {arch}")
        if ksrc and k.release != kver:
            k = dataclasses.replace(k, release=kver)
        return k

    def sourceless(self, added: Added) -> bool:
        """Registered from a binaries-only tarball (``_binaries_only``)."""
        return added.source.parent == self.paths.binaries_only

    def _outcomes(self, s: session.Session) -> None:
        for o in s.outcomes:
            self.out(f"{o.ident}{', ' + o.kver if o.kver else ''}: {o.action}")
        s.outcomes.clear()

    def check_kernels(self, action: str) -> None:
        """dkms's have_one_kernel, before anything is locked or read (DKMS 3.1.6+, and so
        here for 3.0.10 too: a deliberate difference, docs/reference/dkms.md): the kernel
        hooks need exactly one -k; autoinstall and match take no --all and at most one -k
        (none: the running kernel)."""
        row = verbs.of(action)
        hook = row.dkms_one_kernel
        if not hook and not row.dkms_no_all:
            return
        if "all" in self.a.flags:
            raise DkmsExit(5, f"The action {action} does not support the --all parameter.")
        if hook and len(self.a.kernels) != 1:
            raise DkmsExit(
                4,
                f"The action {action} requires exactly one kernel version parameter "
                f"on the command line.",
            )
        if len(self.a.kernels) > 1:
            raise DkmsExit(
                4,
                f"The action {action} does not support multiple kernel "
                f"version parameters on the command line.",
            )

    def _one_kernel(self, action: str) -> tuple[str, str]:
        self.check_kernels(action)
        (pair,) = self.kernel_pairs()
        return pair
