"""The initramfs follows the modules (issue 25). A module the initramfs carries (zfs for a
root on zfs, a storage or a display driver) is the one that must match after a reinstall
or an upgrade: the initramfs holds a copy, and the copy is what boots.

After a command installed or removed modules for a kernel, and depmod ran, each such
kernel's image (``/boot/initrd.img-KVER``, initramfs-tools; ``/boot/initramfs-KVER.img``,
dracut) is listed (``lsinitramfs``, ``lsinitrd``); when it carries one of those modules
(or ``/etc/initramfs-tools/modules`` names one), it is made again with the system's own
tool (``update-initramfs -u -k KVER``, ``dracut -f --kver KVER``), once per kernel per
command, and the command says so. The kernel hooks leave it to the kernel's own
initramfs hook, which runs after extmod's (postinst.d runs its scripts in name order:
``dkms`` before ``initramfs-tools``). ``doctor`` names an image whose copy of a module is
not the installed one (``stale``)."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import shutil
import tempfile
from pathlib import Path

from extmod.core import run
from extmod.core.errors import ExtmodError
from extmod.core.paths import Paths
from extmod.kernel.finish import module_stem
from extmod.ops.session import Session

IMAGES = ("initrd.img-{kver}", "initramfs-{kver}.img")


def image(p: Paths, kver: str) -> Path | None:
    for name in IMAGES:
        f = p.root / "boot" / name.format(kver=kver)
        if f.is_file():
            return f
    return None


def _lister() -> tuple[str, str] | None:
    """(program, what regenerates) of the initramfs generator here, or None."""
    if shutil.which("lsinitramfs") and shutil.which("update-initramfs"):
        return "lsinitramfs", "update-initramfs"
    if shutil.which("lsinitrd") and shutil.which("dracut"):
        return "lsinitrd", "dracut"
    return None


def remake(kver: str) -> list[str]:
    """The command that makes the kernel's initramfs again, with the generator here."""
    tools = _lister()
    if tools is not None and tools[1] == "dracut":
        return ["dracut", "-f", "--kver", kver]
    return ["update-initramfs", "-u", "-k", kver]


def carried(p: Paths, img: Path) -> dict[str, str]:
    """Module stem -> its path in the image, for every module ``img`` carries; and each
    stem ``/etc/initramfs-tools/modules`` names (path "")."""
    found: dict[str, str] = {}
    tools = _lister()
    if tools is not None:
        try:
            listing = run.capture([tools[0], img])
        except (run.CommandFailed, ExtmodError):
            listing = ""
        for line in listing.splitlines():
            stem = module_stem(Path(line.strip()).name)
            if stem:
                found.setdefault(stem, line.strip())
    wanted = p.root / "etc/initramfs-tools/modules"
    if wanted.is_file():
        for line in wanted.read_text(errors="replace").splitlines():
            word = line.split("#")[0].split()[:1]
            if word:
                found.setdefault(word[0].replace("-", "_"), "")
    return found


def follow(s: Session, touched: dict[str, set[str]]) -> list[str]:
    """For each kernel in ``touched`` (KVER -> stems of the modules installed or removed)
    whose initramfs carries one of them: made again. The kernels done."""
    done = []
    for kver, stems in sorted(touched.items()):
        img = image(s.paths, kver)
        if img is None or not stems:
            continue
        hit = sorted({x.replace("-", "_") for x in stems} & set(carried(s.paths, img)))
        if not hit:
            continue
        tools = _lister()
        if s.paths.root != Path("/") or tools is None:
            s.note(f"{img} carries {', '.join(hit)}: make it again (not done here)")
            continue
        argv = remake(kver)
        s.say(f"{kver}: {img.name} carries {', '.join(hit)}: {' '.join(argv)}")
        try:
            run.capture(argv)
            done.append(kver)
        except (run.CommandFailed, ExtmodError) as e:
            s.note(f"{' '.join(argv)} failed: {str(e).strip()[:300]}")
    return done


def stale(p: Paths, kver: str, installed: dict[str, Path]) -> list[str]:
    """The modules (stems) whose copy in the kernel's initramfs has another srcversion
    than the installed file (``installed``: stem -> path)."""
    img = image(p, kver)
    if img is None or not shutil.which("unmkinitramfs"):
        return []
    inside = {k: v for k, v in carried(p, img).items() if v and k in installed}
    if not inside:
        return []
    out = []
    with tempfile.TemporaryDirectory(prefix="extmod-initramfs-") as tmp:
        try:
            run.capture(["unmkinitramfs", img, tmp])
        except (run.CommandFailed, ExtmodError):
            return []
        for stem in sorted(inside):
            copies = list(Path(tmp).rglob(Path(inside[stem]).name))
            if copies and _version(copies[0]) != _version(installed[stem]):
                out.append(stem)
    return out


def _version(ko: Path) -> str:
    """The module's srcversion (modpost's sum of its sources), or, for a module without
    one (no MODULE_VERSION, and the kernel's MODULE_SRCVERSION_ALL off), its bytes'."""
    try:
        found = run.capture(["modinfo", "-F", "srcversion", ko]).strip()
    except (run.CommandFailed, ExtmodError):
        found = ""
    if found:
        return found
    data = ko.read_bytes()
    try:  # a copy may be compressed where the other is not
        data = {".xz": lzma.decompress, ".gz": gzip.decompress}.get(ko.suffix, bytes)(data)
    except (lzma.LZMAError, OSError, EOFError):
        pass
    return hashlib.sha256(data).hexdigest()
