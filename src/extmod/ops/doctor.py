"""`extmod doctor`: is this machine ready to build, sign and install modules for its
kernels? Each check says ok, warn or FAIL, and a problem comes with the command that fixes
it. Read-only: doctor writes nothing (a missing default key is reported, not made)."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from extmod.core import hints, run
from extmod.core.config import Config
from extmod.core.errors import CannotVerifyError, EnvError, ExtmodError, KernelError, UserError
from extmod.core.paths import Paths
from extmod.kernel import kernel, signing, thinlto, toolchain, vm
from extmod.kernel.finish import module_stem
from extmod.ops import hooks, initramfs
from extmod.store import failures, status
from extmod.store.state import State, by_module


@dataclass(frozen=True)
class Check:
    area: str  # tools, headers, toolchain, signing, cache, verify, state, dkms, hooks
    subject: str  # a kernel release, a path, or "" for the machine
    status: str  # ok, warn, FAIL
    detail: str
    fix: str | None = None
    exit_code: int = 0  # of a FAIL: the documented exit code of that kind of problem

    def line(self) -> str:
        subject = f"{self.subject}: " if self.subject else ""
        text = f"{self.status:<5} {self.area:<10} {subject}{self.detail}"
        return text + (f"\n{'':<16} fix: {self.fix}" if self.fix else "")


# (binary, Debian package): what every build or install needs.
_TOOLS = (
    ("bash", "bash"),
    ("make", "make"),
    ("depmod", "kmod"),
    ("modinfo", "kmod"),
    ("nm", "binutils"),
    ("openssl", "openssl"),
)


def _headers_fix(paths: Paths, kver: str) -> str:
    if not hints.family(paths.os_release):
        link = paths.kernels_dir / kver / "build"
        return f"install the headers of {kver} so that {link} leads to them"
    return hints.install(f"linux-headers-{kver}", os_release=paths.os_release)


def run_checks(paths: Paths, config: Config, kvers: list[str] | None) -> list[Check]:
    checks = [_tools()]
    releases = (
        kvers
        if kvers is not None
        else sorted(
            d.name
            for d in paths.kernels_dir.iterdir()
            if d.is_dir()
            and ((d / "build").exists() or (d / "build").is_symlink() or (d / "kernel").is_dir())
        )
        if paths.kernels_dir.is_dir()
        else []
    )
    if not releases:
        checks.append(
            Check(
                "headers",
                "",
                "FAIL",
                f"no kernel under {paths.kernels_dir}",
                _headers_fix(paths, "$(uname -r)"),
                KernelError.exit_code,
            )
        )
    known: list[kernel.Kernel] = []
    for kver in releases:
        k = _headers(paths, kver, checks)
        if k is not None:
            known.append(k)
            _toolchain(kver, k, checks)
            _signing(paths, config, kver, k, checks)
    _cache(paths, config, known, checks)
    _verify(paths, config, known, checks)
    _state(paths, checks)
    _initramfs(paths, releases, checks)
    _dkms_and_hooks(paths, checks)
    return checks


def _initramfs(paths: Paths, releases: list[str], checks: list[Check]) -> None:
    """An initramfs image whose copy of a module extmod installed is not that module (its
    srcversion differs): the next boot loads the old one (issue 25)."""
    try:
        records = State(paths).all_installed(None)
    except ExtmodError:
        return  # named by the state check
    for kver in releases:
        mods = {
            module_stem(Path(f.path).name): paths.modules_dir / kver / f.path
            for r in records
            if r.kver == kver
            for f in r.files
        }
        stale = initramfs.stale(paths, kver, {k: v for k, v in mods.items() if k})
        if stale:
            img = initramfs.image(paths, kver)
            checks.append(
                Check(
                    "initramfs",
                    kver,
                    "warn",
                    f"{img} carries another {', '.join(stale)} than the installed one",
                    " ".join(initramfs.remake(kver)),
                )
            )


def _tools() -> Check:
    missing = []
    for name, pkg in _TOOLS:
        try:
            run.system_tool(name, pkg)
        except EnvError:
            missing.append((name, pkg))
    if missing:
        return Check(
            "tools",
            "",
            "FAIL",
            f"not found: {', '.join(n for n, _ in missing)}",
            hints.install(*sorted({p for _, p in missing})),
            EnvError.exit_code,
        )
    return Check("tools", "", "ok", ", ".join(n for n, _ in _TOOLS))


def _headers(paths: Paths, kver: str, checks: list[Check]) -> kernel.Kernel | None:
    link = paths.kernels_dir / kver / "build"
    if not link.exists():
        checks.append(
            Check(
                "headers",
                kver,
                "FAIL",
                f"no build tree ({link})",
                _headers_fix(paths, kver),
                KernelError.exit_code,
            )
        )
        return None
    try:
        k = kernel.load(paths.in_root(link))
    except KernelError as e:
        checks.append(
            Check("headers", kver, "FAIL", str(e), _headers_fix(paths, kver), KernelError.exit_code)
        )
        return None
    if k.missing:
        checks.append(
            Check(
                "headers",
                kver,
                "FAIL",
                f"{k.build_dir} is not prepared: {k.missing} is missing",
                f"make -C {k.build_dir} modules_prepare (or reinstall the headers)",
                KernelError.exit_code,
            )
        )
        return None
    symvers = (
        ""
        if (k.build_dir / "Module.symvers").exists()
        else " (no Module.symvers: symbols are not load-checked)"
    )
    checks.append(Check("headers", kver, "ok", f"{k.build_dir}{symvers}"))
    return k


def _toolchain(kver: str, k: kernel.Kernel, checks: list[Check]) -> None:
    try:
        tc = toolchain.from_kernel(k)
        r = toolchain.resolve(tc, k)
    except ExtmodError as e:
        detail, _, package = str(e).partition(": apt-get ")
        checks.append(
            Check(
                "toolchain",
                kver,
                "FAIL",
                detail,
                f"apt-get {package}" if package else None,
                e.exit_code,
            )
        )
        return
    lto = f", ThinLTO (kbuild cache: {k.kbuild_cache})" if k.lto == "thin" else ""
    checks.append(
        Check("toolchain", kver, "ok", f"{r.version_line}{f', {r.ld}' if r.ld else ''}{lto}")
    )


def _signing(
    paths: Paths, config: Config, kver: str, k: kernel.Kernel, checks: list[Check]
) -> None:
    if k.config.get("CONFIG_MODULE_SIG") != "y":
        checks.append(
            Check(
                "signing", kver, "ok", "the kernel does not check signatures (no CONFIG_MODULE_SIG)"
            )
        )
        return
    forced = k.config.get("CONFIG_MODULE_SIG_FORCE") == "y"
    sign_file = k.build_dir / "scripts/sign-file"
    if not os.access(sign_file, os.X_OK):
        checks.append(
            Check(
                "signing",
                kver,
                "FAIL" if forced else "warn",
                f"{sign_file} not found: modules would not be signed"
                + (" and this kernel refuses unsigned ones" if forced else ""),
                _headers_fix(paths, kver),
                EnvError.exit_code,
            )
        )
        return
    key, cert = signing.key_pair(config, paths)
    if not key.exists() and not cert.exists() and not (config.sign_key or config.sign_cert):
        checks.append(
            Check("signing", kver, "ok", f"a key pair is made in {key.parent} at the first build")
        )
        return
    try:
        for what, f in (("sign.key", key), ("sign.cert", cert)):
            if not f.exists():
                raise UserError(f"{what}: {f} does not exist")
        signing.check_key(key)
    except UserError as e:
        checks.append(
            Check(
                "signing",
                kver,
                "FAIL",
                str(e),
                "set sign.key and sign.cert to a usable pair (docs/reference/config.md)",
                UserError.exit_code,
            )
        )
        return
    checks.append(_enrolled(paths, kver, key, cert))


def _enrolled(paths: Paths, kver: str, key: Path, cert: Path) -> Check:
    """Under Secure Boot the certificate must be enrolled (a MOK) for signed modules to
    load; mokutil says whether it is. Only on the machine itself (not under --root)."""
    mokutil = shutil.which("mokutil")
    if paths.root != Path("/") or mokutil is None:
        return Check("signing", kver, "ok", f"signs with {key}")
    try:
        state = run.capture([mokutil, "--sb-state"])
    except run.CommandFailed:
        return Check("signing", kver, "ok", f"signs with {key} (Secure Boot state unknown)")
    if "enabled" not in state.lower():
        return Check("signing", kver, "ok", f"signs with {key} (Secure Boot is off)")
    try:
        test = run.capture([mokutil, "--test-key", cert])
    except run.CommandFailed as e:
        test = e.output
    if "not enrolled" in test:
        return Check(
            "signing",
            kver,
            "FAIL",
            f"Secure Boot is on and {cert} is not enrolled: signed modules will not load",
            f"mokutil --import {cert} (then reboot and enroll it)",
            EnvError.exit_code,
        )
    return Check("signing", kver, "ok", f"signs with {key}; {cert} is enrolled")


def _cache(paths: Paths, config: Config, kernels: list[kernel.Kernel], checks: list[Check]) -> None:
    for base in thinlto.all_bases(config, kernels, paths):
        spaces = thinlto.namespaces(base)
        size, files = sum(n.size for n in spaces), sum(n.files for n in spaces)
        limit = config.thinlto_max_size
        text = f"ThinLTO cache {base}: {files} files, {_mib(size)}" + (
            f" of {_mib(limit)}" if limit else ""
        )
        over = bool(limit) and size > limit
        checks.append(
            Check(
                "cache", "", "warn" if over else "ok", text, "extmod cache prune" if over else None
            )
        )
    builds = paths.builds_root
    if builds.is_dir():
        size = sum(
            f.stat().st_size for f in builds.rglob("*") if f.is_file() and not f.is_symlink()
        )
        checks.append(Check("cache", "", "ok", f"kept build dirs {builds}: {_mib(size)}"))


def _verify(
    paths: Paths, config: Config, kernels: list[kernel.Kernel], checks: list[Check]
) -> None:
    """What extmod verify needs: qemu for the kernels' arch, a static busybox, an image of
    each kernel. A warning while nothing asks for it ([verify] after_install = off)."""
    wanted = config.verify_after_install != "off"
    bad, code = ("FAIL", CannotVerifyError.exit_code) if wanted else ("warn", 0)
    machines = set()
    for arch in sorted({k.arch for k in kernels}):
        try:
            m = vm.machine(arch)
        except CannotVerifyError as e:
            fix = str(e).split(": ", 1)[-1]
            checks.append(Check("verify", arch, bad, str(e).split(": ")[0], fix, code))
            continue
        machines.add(arch)
        checks.append(Check("verify", arch, "ok", f"{m.qemu}, {m.busybox} (static)"))
    for k in kernels:
        try:
            img = vm.image(paths, k)
        except CannotVerifyError as e:
            fix = (
                f"{hints.install(f'linux-image-{k.release}', os_release=paths.os_release)}, "
                f"or extmod verify --image FILE"
            )
            checks.append(Check("verify", k.release, bad, str(e).split(" (")[0], fix, code))
            continue
        # (issue 22: said "boots IMAGE" with no qemu to boot it)
        can = "can boot" if k.arch in machines else "has an image to boot, once qemu is here:"
        checks.append(Check("verify", k.release, "ok", f"{can} {img}"))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _writable(paths: Paths, checks: list[Check]) -> bool:
    """The state dir (or the nearest dir that would hold it) can be written by whoever runs
    doctor: a read-only root, a read-only /var/lib/extmod or another user's tree fail
    every verb that changes something (exit 7)."""
    where = paths.state_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    if os.access(where, os.W_OK | os.X_OK) and (where == paths.state_dir or where.is_dir()):
        return True
    why = "read-only file system" if _read_only_fs(where) else "permission denied"
    checks.append(
        Check(
            "state",
            "",
            "FAIL",
            f"{where} is not writable ({why}): install, uninstall and add cannot work",
            "run as root, remount read-write, or give --root DIR",
            EnvError.exit_code,
        )
    )
    return False


def _failures(paths: Paths, checks: list[Check]) -> None:
    """The remembered build failures; what is kept for a kernel that is gone."""
    for f in failures.every(paths):
        if not (paths.modules_dir / f.kver).is_dir():
            checks.append(
                Check(
                    "state",
                    f.kver,
                    "warn",
                    f"kernel {f.kver} is gone, and extmod still keeps what it built for it",
                    f"extmod kernel-prerm {f.kver}",
                )
            )
            continue
        checks.append(
            Check(
                "state",
                f.kver,
                "warn",
                f"{f.name}/{f.version} failed to build: {f.error}",
                f"fix the cause, then extmod install {f.name}/{f.version} -k {f.kver}",
            )
        )


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _state(paths: Paths, checks: list[Check]) -> None:
    _writable(paths, checks)
    st = State(paths)
    pending = st.journals()
    if pending:
        checks.append(
            Check(
                "state",
                "",
                "warn",
                f"{len(pending)} interrupted install(s) or uninstall(s) "
                f"({', '.join(sorted({k for k, _ in pending}))})",
                "extmod autoinstall (every lifecycle verb finishes them first)",
            )
        )
    _failures(paths, checks)
    for rec in status.orphans(st):
        checks.append(
            Check(
                "state",
                rec.kver,
                "warn",
                f"{rec.name}/{rec.version} is installed but not added (its registration "
                f"{st.package_dir(rec.name, rec.version) / 'added.json'} is gone)",
                f"extmod uninstall {rec.name}/{rec.version} -k {rec.kver}, or extmod add "
                f"its source again",
            )
        )
    for rec in st.all_installed():
        changed, missing = status.drift(st, rec)
        if changed or missing:
            what = [f"{p} changed" for p in changed] + [f"{p} deleted" for p in missing]
            checks.append(
                Check(
                    "state",
                    rec.kver,
                    "warn",
                    f"{rec.name}/{rec.version}: since it was installed, {', '.join(what)}",
                    f"extmod install {rec.name}/{rec.version} -k {rec.kver} --force",
                )
            )
        for module, why in by_module(rec.withheld).items():
            checks.append(
                Check(
                    "state",
                    rec.kver,
                    "warn",
                    f"{rec.name}/{rec.version}: withheld {module}: {'; '.join(why)}",
                    f"install what exports the symbol (BUILD_DEPENDS), or "
                    f"extmod install {rec.name}/{rec.version} -k {rec.kver} "
                    f"--force",
                )
            )
    if not pending:
        checks.append(Check("state", "", "ok", f"{paths.state_dir}: no interrupted operation"))


def _dkms_and_hooks(paths: Paths, checks: list[Check]) -> None:
    tree = paths.dkms_records
    managed = sorted(d.name for d in tree.iterdir() if d.is_dir()) if tree.is_dir() else []
    if managed:
        checks.append(
            Check(
                "dkms",
                "",
                "warn",
                f"DKMS still manages {', '.join(managed)}: both tools would build them",
                "extmod import-dkms --dry-run, then extmod import-dkms",
            )
        )
    kinds = hooks.detect(paths.root)
    wired = [k for k in kinds if all(hooks.is_installed(paths.root, h) for h in hooks.KINDS[k])]
    if kinds and not wired:
        checks.append(
            Check(
                "hooks",
                "",
                "warn",
                "no extmod hook is installed: new kernels get no modules",
                "extmod install-hooks",
            )
        )
    elif wired:
        checks.append(Check("hooks", "", "ok", f"installed for {', '.join(wired)}"))


def data(checks: list[Check]) -> list[dict[str, object]]:
    return [asdict(c) for c in checks]
