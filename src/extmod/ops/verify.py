"""``extmod verify``: before the reboot, boot the target kernel in a VM and load the
modules extmod installed for it, exactly as installed (signed, compressed), with the
modules they depend on from the kernel's own module tree (modules.dep's closure).

One VM per kernel. Its /init modprobes each module in dependency order and prints, after
each, modprobe's status and words, the kernel's lines since the one before, and the taint
flags; then it rmmods them in reverse order and powers off. Markers carry a random word,
so a module's own printk cannot pass for one. What is written: one verification record
per (package, kernel) in the state tree (``status`` shows it), nothing else.

Signatures: on a CONFIG_MODULE_SIG kernel whose built-in keys include the certificate
extmod signs with, the VM boots with module.sig_enforce=1, so a module signed with
another key is refused here rather than at boot. A kernel that cannot trust extmod's key
(a distribution's kernel: a MOK reaches it only through shim on UEFI) is booted without
enforcement, and its report says so."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from extmod.core import atomic, run
from extmod.core.errors import ExtmodError, VerifyError
from extmod.kernel import kernel as kernel_mod
from extmod.kernel import signing, vm
from extmod.kernel.finish import module_stem
from extmod.kernel.kernel import Kernel
from extmod.ops import installer
from extmod.ops.session import Outcome, Session
from extmod.store.state import Installed, now, parse_spec
from extmod.store.status import verification_file

TAINT_DIE = 1 << 7  # an oops (D)
TAINT_WARN = 1 << 9  # a WARN() (W)
FAILED = ("failed", "oops", "hung", "not tried")  # results that fail verify
_OOPS = re.compile(r"(?:BUG:|Oops|kernel BUG at|general protection fault|Kernel panic).*")


@dataclass
class ModuleRow:
    package: str  # NAME/VERSION
    module: str
    file: str  # relative to /lib/modules/KVER
    result: str = "not tried"  # loaded, failed, oops, hung, not tried
    detail: str = ""  # modprobe's error, the oops's first line
    messages: list[str] = field(default_factory=list)  # the kernel's lines of its load
    unloaded: str = ""  # "yes", or rmmod's error
    notes: list[str] = field(default_factory=list)
    no_device: bool = False  # failed with ENODEV/ENXIO: the VM may just lack its device


@dataclass
class KernelReport:
    kver: str
    arch: str
    image: str
    accel: str = ""
    seconds: float = 0.0
    enforced: bool = False
    timed_out: bool = False
    booted: str = ""  # the release the VM's kernel said it is (uname -r in /init)
    notes: list[str] = field(default_factory=list)
    rows: list[ModuleRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.booted) and all(r.result == "loaded" for r in self.rows)


def verify(
    s: Session, kernels: Iterable[Kernel], specs: Iterable[str] = (), image: Path | None = None
) -> list[KernelReport]:
    """Verify what extmod installed for each kernel (the packages ``specs`` name, or all);
    records the outcome per (package, kernel)."""
    wanted = [parse_spec(x) for x in specs]
    reports = []
    for kernel in kernels:
        recs = [
            r
            for r in s.state.all_installed(kernel.release)
            if r.arch == kernel.arch
            and (not wanted or any(n == r.name and v in (None, r.version) for n, v in wanted))
        ]
        if not recs:
            s.note(f"{kernel.release}: nothing extmod installed to verify")
            continue
        report = _verify_kernel(s, kernel, recs, image)
        for rec in recs:
            _record(s, kernel, rec, report)
        reports.append(report)
    return reports


def _verify_kernel(
    s: Session, kernel: Kernel, recs: list[Installed], image: Path | None
) -> KernelReport:
    m = vm.machine(kernel.arch)
    img = vm.image(s.paths, kernel, image)
    report = KernelReport(kernel.release, kernel.arch, str(img))
    preload: list[str] = []
    files, report.rows = _closure(s, kernel, recs, report.notes, preload)
    append, report.enforced = _enforcement(s, kernel, report.notes)
    word = secrets.token_hex(4)
    files["bin/busybox"] = m.busybox
    files["init"] = _init_script(
        word,
        [r.module for r in report.rows],
        s.config.verify_timeout,
        [f"/lib/modules/{kernel.release}/{rel}" for rel in preload],
    )
    s.board.phase(("verify", kernel.release), "booting")
    with tempfile.TemporaryDirectory(prefix="extmod-verify-") as tmp:
        initramfs = Path(tmp) / "initramfs.cpio"
        vm.write_initramfs(files, initramfs)
        boot = vm.boot(
            m,
            img,
            initramfs,
            f"quiet loglevel=1 {append}".strip(),
            timeout=s.config.verify_timeout,
            memory=max(256, s.config.verify_memory >> 20),
            ready=f"@{word}@ READY",
            done=f"@{word}@ DONE",
            kvm_memo=s.paths.kvm_memo,
            accel=s.config.verify_accel,
        )
    report.accel, report.seconds, report.timed_out = boot.accel, boot.seconds, boot.timed_out
    _read_console(boot.console, word, report)
    return report


def _closure(
    s: Session, kernel: Kernel, recs: list[Installed], notes: list[str], preload: list[str]
) -> tuple[dict[str, Path | bytes], list[ModuleRow]]:
    """The initramfs's module tree: each installed module and what modules.dep says it
    needs, at the same paths; a modules.dep of just those. The rows in load order.
    ``preload`` gets the soft dependencies (modules.softdep's "pre:", which busybox's
    modprobe does not read: libcrc32c needs crc32c loaded first), to insmod up front."""
    kdir = s.paths.modules_dir / kernel.release
    deps = _modules_dep(kdir / "modules.dep")
    if not deps:
        notes.append(f"{kdir}/modules.dep is missing or empty: dependencies are not loaded")
    if not (kdir / "kernel").is_dir():
        notes.append(
            f"{kdir}/kernel is missing: the kernel's own modules are not here, so a module "
            f"that needs one of them (x_tables, videodev ...) fails with unknown symbols"
        )
    order: list[str] = []

    def visit(rel: str) -> None:
        if rel in order:
            return
        for d in deps.get(rel, ()):
            visit(d)
        order.append(rel)

    ours = {f.path: rec for rec in recs for f in rec.files}
    for rel in sorted(ours):
        visit(rel)
    files: dict[str, Path | bytes] = {}
    present = []
    for rel in order:
        if (kdir / rel).is_file():
            files[f"lib/modules/{kernel.release}/{rel}"] = kdir / rel
            present.append(rel)
        else:
            notes.append(f"{rel}: needed but not in {kdir} (not in the VM)")
    dep_text = "".join(
        f"{rel}: {' '.join(d for d in deps.get(rel, ()) if d in present)}\n" for rel in present
    )
    files[f"lib/modules/{kernel.release}/modules.dep"] = dep_text.encode()
    for rel in _soft_dependencies(s, kernel, sorted(ours), set(order)):
        files[f"lib/modules/{kernel.release}/{rel}"] = kdir / rel
        preload.append(rel)
    rows = [
        ModuleRow(f"{ours[rel].name}/{ours[rel].version}", _module_name(rel), rel)
        for rel in order
        if rel in ours
    ]
    return files, rows


def _soft_dependencies(s: Session, kernel: Kernel, ours: list[str], hard: set[str]) -> list[str]:
    """What kmod's modprobe would load for our modules beyond modules.dep (soft
    dependencies, aliases resolved): relative to /lib/modules/KVER, in its order."""
    kdir = s.paths.modules_dir / kernel.release
    base = s.paths.modules_dir.parent.parent  # -d: the root holding lib/modules
    modprobe = shutil.which("modprobe", path=run.scrubbed_env()["PATH"] + ":/sbin:/usr/sbin")
    found: list[str] = []
    if modprobe is None:
        return found
    for rel in ours:
        try:
            out = run.query(
                [modprobe, "-d", base, "-S", kernel.release, "--show-depends", _module_name(rel)]
            ).stdout.decode(errors="replace")
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in out.splitlines():
            path = Path(line.split()[1]) if line.startswith("insmod ") else None
            if path is None or not path.is_file():
                continue
            extra = os.path.relpath(path, kdir)
            if extra not in hard and extra not in found and not extra.startswith(".."):
                found.append(extra)
    return found


def _modules_dep(path: Path) -> dict[str, list[str]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        mod, _, rest = line.partition(":")
        if mod:
            out[mod.strip()] = rest.split()
    return out


def _module_name(rel: str) -> str:
    name = Path(rel).name
    return module_stem(name) or name


def _enforcement(s: Session, kernel: Kernel, notes: list[str]) -> tuple[str, bool]:
    """module.sig_enforce=1 when the kernel's built-in keys include extmod's certificate."""
    if kernel.config.get("CONFIG_MODULE_SIG") != "y":
        return "", False
    _, cert = signing.key_pair(s.config, s.paths)
    if cert.is_file() and signing.kernel_trusts(kernel, cert):
        return "module.sig_enforce=1", True
    notes.append(
        f"signatures not enforced: kernel {kernel.release}'s built-in keys do not include "
        f"{cert} (a MOK reaches a distribution kernel through shim on UEFI, not in this VM)"
    )
    return "", False


def _init_script(word: str, modules: list[str], timeout: int, preload: list[str]) -> bytes:
    """/init: the soft dependencies first, then each module, saying how it went; unload
    them all; reboot (which ends the VM)."""
    each = max(10, timeout // max(2, len(modules) + 1))
    mark = f"@{word}@"
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox mkdir -p /proc /sys /dev /tmp",
        "/bin/busybox --install -s /bin",
        "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev",
        f'echo "{mark} READY $(uname -r)"',
        *(f"insmod {p} >/dev/null 2>&1" for p in preload),
        "dmesg -c >/dev/null 2>&1",
    ]
    for m in modules:
        lines += [
            f'echo "{mark} BEGIN {m}"',
            f"out=$(timeout -s KILL {each} modprobe {m} 2>&1); rc=$?",
            f'echo "{mark} RC {m} $rc"',
            f'[ -n "$out" ] && echo "$out" | sed "s/^/{mark} OUT {m} /"',
            f'dmesg -c | sed "s/^/{mark} KMSG {m} /"',
            f'echo "{mark} TAINT {m} $(cat /proc/sys/kernel/tainted)"',
        ]
    for m in reversed(modules):
        lines += [
            f"if grep -q '^{m.replace('-', '_')} ' /proc/modules; then",
            f'  out=$(rmmod {m} 2>&1); echo "{mark} RMMOD {m} $? $out"',
            f'  dmesg -c | sed "s/^/{mark} KMSG {m} /"',
            "fi",
        ]
    # reboot, not poweroff: a kernel without ACPI (a tiny one) cannot power off, and qemu
    # runs with -no-reboot, so a reboot ends it.
    lines += [f'echo "{mark} DONE"', "sync", "reboot -f"]
    return ("\n".join(lines) + "\n").encode()


def _read_console(console: str, word: str, report: KernelReport) -> None:
    """Each row's result from the markers; what the console says after the last one
    (a panic) belongs to the module being loaded."""
    rows = {r.module: r for r in report.rows}
    mark = f"@{word}@ "
    taint, current = 0, None
    for line in console.splitlines():
        if mark not in line:
            if current is not None and _OOPS.search(line):
                current.messages.append(line.strip())
            continue
        kind, _, rest = line.split(mark, 1)[1].partition(" ")
        name, _, value = rest.partition(" ")
        row = rows.get(name)
        if kind == "READY":
            report.booted = rest.strip()
        elif row is None:
            continue
        elif kind == "BEGIN":
            current, row.result = row, "hung"
        elif kind == "RC":
            row.result = "loaded" if value == "0" else "failed"
        elif kind in ("OUT", "KMSG"):
            (row.messages if kind == "KMSG" else row.notes).append(value)
        elif kind == "TAINT":
            taint = _judge(row, int(value or 0), taint)
            current = None
        elif kind == "RMMOD" and row.result == "loaded":  # an oopsed one stays, said
            rc, _, err = value.partition(" ")
            row.unloaded = "yes" if rc == "0" else (err or f"rmmod exit {rc}")
    if current is not None:
        _hung_or_panicked(current, report)


def _judge(row: ModuleRow, taint: int, before: int) -> int:
    """The row's result once its load is over, from modprobe's status, the kernel's
    lines and the taint flags it added."""
    new = taint & ~before
    oops = next((found.group(0) for m in row.messages if (found := _OOPS.search(m))), None)
    if new & TAINT_DIE or oops:
        row.result, row.detail = "oops", oops or "the kernel is tainted D (an oops)"
    elif row.result == "failed":
        said = " ".join(row.notes)
        row.detail = _reason(said, row.messages)
        row.no_device = bool(re.search(r"No such device|No such device or address", said))
        if row.no_device:
            row.notes.append("the VM may lack its device: [verify] after_install = refuse keeps it")
    if new & TAINT_WARN and row.result == "loaded":
        row.notes.append("the kernel printed a warning (taint W)")
    return taint


# The kernel's lines that say why a load failed, the most telling first.
_WHY = (
    re.compile(r"Unknown symbol .*"),
    re.compile(r"disagrees about version of symbol .*"),
    re.compile(r"no symbol version for .*"),
    re.compile(r".*(?:rejected|Required key not available|Key was rejected).*", re.I),
    re.compile(r"(?:version magic|invalid module format|exec format).*", re.I),
)


def _reason(said: str, messages: list[str]) -> str:
    """modprobe's words, and the kernel's line that says why (unknown symbol, key)."""
    why = next((m for p in _WHY for m in messages if p.search(m)), "")
    said = re.sub(r"^modprobe: ", "", said.strip())
    why = re.sub(r"^\[\s*[\d.]+\]\s*", "", why)
    return f"{said}: {why}" if why and said else (why or said or "modprobe failed")


def _hung_or_panicked(row: ModuleRow, report: KernelReport) -> None:
    panic = next((m for m in row.messages if "Kernel panic" in m), None)
    if panic or any(_OOPS.search(m) for m in row.messages):
        row.result, row.detail = "oops", (panic or row.messages[0])
    else:
        row.result = "hung"
        row.detail = f"its init did not return within the VM's {report.seconds:.0f} s"


def _record(s: Session, kernel: Kernel, rec: Installed, report: KernelReport) -> None:
    rows = [r for r in report.rows if r.package == f"{rec.name}/{rec.version}"]
    data = {
        "name": rec.name,
        "version": rec.version,
        "kernel": kernel.release,
        "arch": kernel.arch,
        "verified": now(),
        "accel": report.accel,
        "seconds": round(report.seconds, 1),
        "enforced": report.enforced,
        "ok": all(r.result == "loaded" for r in rows),
        "files": sorted(f.sha256 for f in rec.files),
        "rows": [asdict(r) for r in rows],
        "notes": report.notes,
    }
    try:
        atomic.write_json(verification_file(s.state, kernel.release, kernel.arch, rec.name), data)
    except OSError as e:
        s.note(f"verification record of {rec.name} not written: {e.strerror}")


def _about(row: ModuleRow) -> list[str]:
    """The kernel's lines about this module (its name either way, or an oops), without
    the timestamp: the human report leaves out what the boot printed meanwhile."""
    names = {row.module, row.module.replace("-", "_"), row.module.replace("_", "-")}
    lines = [
        re.sub(r"^\[\s*[\d.]+\]\s*", "", m)
        for m in row.messages
        if any(n in m for n in names) or _OOPS.search(m) or "Unknown symbol" in m
    ]
    return list(dict.fromkeys(lines))  # modprobe may try twice; an oops says RIP twice


def summary(report: KernelReport) -> list[str]:
    """The human lines of one kernel's report."""
    head = (
        f"verify {report.kver} ({report.accel}, {report.seconds:.1f} s"
        f"{', signatures enforced' if report.enforced else ''}): {report.image}"
    )
    lines = [head]
    if not report.booted:
        lines.append(f"  the VM did not reach /init{' (timed out)' if report.timed_out else ''}")
    for r in report.rows:
        said = f": {r.detail}" if r.detail else ""
        unload = "; unloaded" if r.unloaded == "yes" else ""
        unload = f"; unload failed: {r.unloaded}" if r.unloaded not in ("", "yes") else unload
        lines.append(f"  {r.package} {r.module}: {r.result}{said}{unload}")
        lines += [f"    kernel: {m}" for m in _about(r)[:8]]
        lines += [f"    note: {n}" for n in r.notes if not n.startswith("modprobe: can't")]
    lines += [f"  note: {n}" for n in report.notes]
    return lines


def after_install(s: Session, before: dict[tuple[str, str], Installed]) -> None:
    """[verify] after_install for autoinstall and kernel-postinst: verify what this command
    installed. warn: say what failed, keep it. refuse: uninstall a package a module of
    which failed (not for a device the VM lacks) and put back the version installed
    before, if its build is kept. ``before``: the installs when the command started."""
    mode = s.config.verify_after_install
    done = [o for o in s.outcomes if o.action == "installed" and o.kver]
    kvers = sorted({o.kver for o in done})
    if mode == "off" or not kvers:
        return
    try:
        kernels = [kernel_mod.by_release(s.paths, k) for k in kvers]
        reports = verify(s, kernels, sorted({o.ident for o in done}))
    except ExtmodError as e:
        s.note(f"cannot verify what was installed: {e}")
        return
    for report in reports:
        for line in summary(report):
            s.say(line)
        if not report.booted:
            s.note(f"{report.kver}: the VM did not reach /init: nothing judged, all kept")
            continue
        for pkg in sorted({r.package for r in report.rows if r.result != "loaded"}):
            _after_failure(s, report, pkg, mode, before)


def _after_failure(
    s: Session, report: KernelReport, pkg: str, mode: str, before: dict[tuple[str, str], Installed]
) -> None:
    bad = [r for r in report.rows if r.package == pkg and r.result != "loaded"]
    why = "; ".join(f"{r.module}: {r.result}{': ' + r.detail if r.detail else ''}" for r in bad)
    refused = mode == "refuse" and any(not r.no_device for r in bad)
    if not refused:
        s.say(f"warning: {pkg} for {report.kver} did not load in the VM ({why}): kept")
        s.record(Outcome(pkg, report.kver, "verify failed", why))
        return
    name = pkg.split("/")[0]
    with s.pair_lock(name, report.kver):
        rec = s.state.find_installed(report.kver, report.arch, name)
        if rec is not None:
            installer.uninstall(s, rec)
    s.record(Outcome(pkg, report.kver, "refused", why, VerifyError.exit_code))
    old = before.get((report.kver, name))
    if old is not None and old.version != pkg.split("/", 1)[1]:
        added = s.state.find_added(old.name, old.version)
        if added is not None and s.state.find_built(
            old.name, old.version, report.kver, report.arch
        ):
            installer.install_pair(s, added, kernel_mod.by_release(s.paths, report.kver))
