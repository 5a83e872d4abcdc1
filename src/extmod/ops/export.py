"""``extmod export``: prebuilt module packages, one per (package, kernel), that install
with the package manager alone (no extmod, no compiler on the target).

Each holds the modules as extmod installs them (stripped, signed, compressed, where the
distribution puts them), a record extmod reads back (``usr/share/extmod/prebuilt/
PKG.json``: ``status`` shows the package as installed "from package" and autoinstall does
not build it again), and scripts that run depmod for its kernel after install and removal.
The .deb depends on the kernel's image package (``linux-image-KVER``)."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from extmod import __version__
from extmod.core import atomic, digest, run
from extmod.core.errors import UserError
from extmod.kernel import modtree
from extmod.kernel.kernel import Kernel
from extmod.ops import freshness
from extmod.ops.session import Outcome, Session
from extmod.store.state import Added, Built
from extmod.store.status import PREBUILT_DIR

FORMATS = ("deb", "tar")
_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "ppc64le": "ppc64el"}


def package_name(name: str, kver: str) -> str:
    """``NAME-modules-KVER`` in Debian's package-name alphabet."""
    return re.sub(r"[^a-z0-9.+-]+", "-", f"{name}-modules-{kver}".lower()).strip("-.+")


def deb_version(version: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9.+~-]+", "+", version)
    return clean if re.match(r"[0-9]", clean) else f"0~{clean}"


def export(s: Session, added: Added, kernel: Kernel, fmt: str, out_dir: Path) -> Path:
    """Build if needed, then write the package of ``added`` for ``kernel`` into out_dir."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    with s.pair_lock(added.name, kernel.release):
        built = freshness.ensure_built(s, added, kernel)
    pkg = package_name(added.name, kernel.release)
    with tempfile.TemporaryDirectory(prefix="extmod-export-") as tmp:
        tree = Path(tmp) / "tree"
        _lay_out(s, built, kernel, tree, pkg)
        out_dir.mkdir(parents=True, exist_ok=True)
        if fmt == "deb":
            result = _deb(tree, added, kernel, pkg, out_dir)
        else:
            result = out_dir / f"{pkg}_{deb_version(added.version)}_{kernel.arch}.tar.gz"
            atomic.write_stream(result, lambda f: _tar(tree, f))
    s.say(f"exported {added.ident} for {kernel.release}: {result}")
    s.record(Outcome(added.ident, kernel.release, "exported", str(result)))
    return result


def _lay_out(s: Session, built: Built, kernel: Kernel, tree: Path, pkg: str) -> None:
    """The modules where extmod would install them, and the record extmod reads back."""
    files = []
    for m in built.modules:
        where = modtree.dest_location(s.config, s.paths, m.dest_location).strip("/")
        rel = f"{where}/{m.file}"
        dest = tree / "lib/modules" / kernel.release / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built.dir / "module" / m.file, dest)
        dest.chmod(0o644)
        files.append({"path": rel, "sha256": digest.file(dest)})
    record = {
        "package": pkg,
        "name": built.name,
        "version": built.version,
        "kernel": kernel.release,
        "arch": kernel.arch,
        "files": files,
        "inputs": built.record.inputs,
        "signed": built.record.signed,
        "extmod": __version__,
    }
    meta = tree / PREBUILT_DIR / f"{pkg}.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


_SCRIPT = """#!/bin/sh
# depmod for the kernel these modules are for ({kind}, made by extmod export)
set -e
if [ -d /lib/modules/{kver} ] && command -v depmod >/dev/null 2>&1; then
\tdepmod -a {kver}
fi
"""


def _deb(tree: Path, added: Added, kernel: Kernel, pkg: str, out_dir: Path) -> Path:
    arch = _DEB_ARCH.get(kernel.arch, kernel.arch)
    control = tree / "DEBIAN"
    control.mkdir()
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file()) // 1024 + 1
    (control / "control").write_text(
        f"Package: {pkg}\nVersion: {deb_version(added.version)}\nArchitecture: {arch}\n"
        f"Maintainer: extmod export <root@localhost>\nInstalled-Size: {size}\n"
        f"Depends: linux-image-{kernel.release}\nSection: kernel\nPriority: optional\n"
        f"Description: {added.name} {added.version} kernel modules for Linux {kernel.release}\n"
        f" Built, signed and compressed by extmod {__version__} for {kernel.release};\n"
        f" installs and removes with the package manager alone (depmod runs).\n"
    )
    for script, kind in (("postinst", "after install"), ("postrm", "after removal")):
        (control / script).write_text(_SCRIPT.format(kind=kind, kver=kernel.release))
        (control / script).chmod(0o755)
    result = out_dir / f"{pkg}_{deb_version(added.version)}_{arch}.deb"
    dpkg_deb = run.system_tool("dpkg-deb", "dpkg")
    try:
        run.capture([dpkg_deb, "--root-owner-group", "--build", str(tree), str(result)])
    except run.CommandFailed as e:
        raise UserError(f"dpkg-deb could not build {result.name}: {e.output[:300]}") from None
    return result


def _tar(tree: Path, f: object) -> None:
    with tarfile.open(fileobj=f, mode="w:gz") as t:  # type: ignore[call-overload]
        for p in sorted(tree.rglob("*")):
            info = t.gettarinfo(str(p), str(p.relative_to(tree)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if p.is_file():
                with open(p, "rb") as data:
                    t.addfile(info, data)
            else:
                t.addfile(info)
