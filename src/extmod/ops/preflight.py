"""``extmod preflight`` (issue 25): would every AUTOINSTALL package build for a kernel that
is not installed yet? Each is built for it, nothing is installed, and nothing under
/lib/modules changes; the finished builds go to the build store, so the kernel's own
postinst hook installs them later without compiling.

Kernels come as trees (``-k``, ``--kernel-dir``), as Debian header packages (``--deb``:
``linux-headers-KVER-ARCH``, its ``-common`` and ``linux-kbuild-X.Y``, each entry checked,
then unpacked into a staging root under the state dir, STATE/preflight/KEY/), or as the
candidates of the next upgrade (``--candidates``: the header packages that the installed
``linux-headers-FLAVOUR`` metapackages would bring, fetched with ``apt-get download``).
The builds are made as autoinstall makes them (one graph, BUILD_DEPENDS first), and each
build record a preflight made is dropped after: ``status`` shows no kernel that is not
there, and the store keeps the build.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from extmod.core import digest, files, run
from extmod.core.errors import EnvError, UserError
from extmod.kernel import kernel as kernel_mod
from extmod.kernel.kernel import Kernel
from extmod.ops import freshness, plan
from extmod.ops.session import Session

# What each outcome of a pair means to a person deciding whether to boot the kernel.
VERDICTS = {
    "built": "builds",
    "up to date": "builds",
    "skipped": "skipped",
    "deferred": "deferred",
    "failed": "fails",
}


@dataclass(frozen=True)
class Row:
    package: str  # NAME/VERSION
    kver: str
    verdict: str  # builds, skipped, deferred, fails
    detail: str  # the first error, the BUILD_EXCLUSIVE reason, "from the store ..."
    exit_code: int = 0


def check(s: Session, kernels: list[Kernel]) -> list[Row]:
    """Every AUTOINSTALL package built for each of ``kernels``; a row per pair. The build
    records it made are dropped again (the store keeps the builds)."""
    had = {
        (a.name, a.version, k.release)
        for a in s.state.all_added()
        for k in kernels
        for b in s.state.builds(a.name, a.version)
        if b.kver == k.release
    }
    pairs = plan.autoinstall(
        s, kernels, lambda a, k, p: freshness.ensure_built(s, a, k, p, retry_failed=True)
    )
    for added, k, _ in pairs:
        if (added.name, added.version, k.release) not in had:
            _forget(s, added.name, added.version, k)
    rows = [
        Row(o.ident, o.kver, VERDICTS.get(o.action, o.action), o.detail, o.exit_code)
        for o in s.outcomes
        if o.action in VERDICTS
    ]
    return sorted(rows, key=lambda r: (r.kver, r.package))


def _forget(s: Session, name: str, version: str, k: Kernel) -> None:
    with s.pair_lock(name, k.release):
        s.state.drop_built(name, version, k.release, k.arch)
    shutil.rmtree(s.paths.work_dir(name, version, k.release), ignore_errors=True)
    for parent in (s.paths.builds_root / name / version, s.paths.builds_root / name):
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


# -- kernels from Debian's header packages ---------------------------------------------------
def stage(s: Session, debs: list[Path]) -> list[Kernel]:
    """The kernels in ``debs`` (Debian header packages), unpacked once into a staging root
    keyed by the packages' names and sizes. Debian's one-line Makefile stub names its
    ``-common`` tree by an absolute path: the staged copy names the staged tree.

    Any other package in ``debs`` is a tool the kernel's build needs and that comes with
    it (6.12's headers ship vmlinux for BTF and depend on pahole): unpacked beside, under
    ``tools/``, each of its programs reachable through a wrapper in ``bin/`` that finds
    its libraries there too; ``tool_path`` names that dir for the builds."""
    for deb in debs:
        if not deb.is_file():
            raise UserError(f"--deb {deb}: no such file")
    key = digest.of(sorted((d.name, d.stat().st_size) for d in debs))[:16]
    root = s.paths.preflight_dir / key
    if not (root / ".staged").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for deb in debs:
            kernel_part = _package_of(deb).startswith(KERNEL_PACKAGES)
            _unpack(deb, root if kernel_part else root / "tools")
        _restub(root)
        _wrap_tools(root)
        (root / ".staged").write_text("\n".join(d.name for d in debs) + "\n")
    # Each kernel as a system names it, ROOT/lib/modules/KVER/build (its dkms.conf sees
    # that path, and ${kernel_source_dir/%build/source}), read inside the staging root.
    staged = dataclasses.replace(s.paths, root=root, install_tree=None, source_dir=None)
    found = []
    links = [
        d / "build"
        for modules in (root / "lib/modules", root / "usr/lib/modules")  # usrmerge: trixie
        if modules.is_dir() and not modules.is_symlink()
        for d in sorted(modules.iterdir())
    ]
    for link in links:
        if not (link.is_symlink() or link.is_dir()):  # a link to /usr/src: dangling here
            continue
        tree = staged.in_root(link)
        if (tree / "include/config/auto.conf").is_file():
            found.append(kernel_mod.load(tree, named=link))
    if not found:
        raise UserError(
            f"--deb: no kernel headers in {', '.join(d.name for d in debs)} "
            f"(a linux-headers-KVER-ARCH package and its -common and linux-kbuild)"
        )
    for k in found:
        k.require_prepared()
    return found


KERNEL_PACKAGES = ("linux-headers-", "linux-kbuild-", "linux-image-")


def tool_path(kernels: list[Kernel], s: Session) -> list[Path]:
    """The wrapper dirs of the staging roots ``kernels`` came from, that exist."""
    found = []
    for k in kernels:
        try:
            rel = k.build_dir.relative_to(s.paths.preflight_dir)
        except ValueError:
            continue
        wrappers = s.paths.preflight_dir / rel.parts[0] / "bin"
        if wrappers.is_dir() and wrappers not in found:
            found.append(wrappers)
    return found


def _package_of(deb: Path) -> str:
    try:
        return run.capture([run.system_tool("dpkg-deb", "dpkg"), "-f", deb, "Package"]).strip()
    except run.CommandFailed as e:
        raise UserError(f"--deb {deb}: dpkg-deb cannot read it: {e}") from None


# What one --deb may unpack to: Debian's biggest header package (-common) is under 100 MB.
DEB_FILE_MAX = 1 << 30
DEB_TOTAL_MAX = 4 << 30


def _unpack(deb: Path, where: Path) -> None:
    """The data of ``deb`` into ``where``, each entry checked before anything is written
    (``_vet``): a .deb given to preflight comes from anywhere, and unpacks as root. Its
    data tar (``dpkg-deb --fsys-tarfile``) is read to a file beside, then dropped."""
    where.mkdir(parents=True, exist_ok=True)
    data = where.parent / f".{where.name}.{deb.name}.tar"
    try:
        run.to_file(
            [run.system_tool("dpkg-deb", "dpkg"), "--fsys-tarfile", deb],
            data,
            limit=DEB_TOTAL_MAX + (1 << 30),
            timeout=900,
        )
        with tarfile.open(data, mode="r:") as tar:
            members = tar.getmembers()
            _vet(deb, members)
            files.unpack(tar, where, members, absolute_links=True)
    except run.CommandFailed as e:
        why = " ".join((e.output.strip().splitlines() or [str(e)])[-1:])
        raise UserError(f"--deb {deb}: dpkg-deb cannot unpack it: {why[:200]}") from None
    except (tarfile.TarError, EOFError) as e:
        raise UserError(f"--deb {deb}: its data cannot be read: {e}") from None
    finally:
        data.unlink(missing_ok=True)


def _vet(deb: Path, members: list[tarfile.TarInfo]) -> None:
    """Refuse the whole .deb, naming the entry, when one entry is anything but a plain
    file, dir, symlink or hard link below the staging root: an absolute or ``..`` name, a
    path through a symlink it made (a file written through a link out), a hard link to
    anything but a file before it, a relative symlink that climbs out of the root, a
    device node or FIFO, a file over DEB_FILE_MAX (a huge sparse file) or all over
    DEB_TOTAL_MAX. A symlink's absolute target is fine: it is read inside the staging
    root (``Paths.in_root``), as dpkg would place it inside the system."""
    links: set[str] = set()
    regular: set[str] = set()
    total = 0
    for m in members:
        name = posixpath.normpath(m.name)
        why = ""
        if m.name.startswith("/") or ".." in m.name.split("/"):
            why = "leads out of the package's root"
        elif any(parent in links for parent in _parents(name)):
            why = "is written through a symlink the package made"
        elif m.ischr() or m.isblk():
            why = "is a device node"
        elif m.isfifo():
            why = "is a FIFO"
        elif m.islnk() and posixpath.normpath(m.linkname) not in regular:
            why = f"is a hard link to {m.linkname!r}, not to a file of the package"
        elif (
            m.issym()
            and not m.linkname.startswith("/")
            and posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname)).startswith(
                ".."
            )
        ):
            why = f"is a symlink to {m.linkname!r}, out of the package's root"
        elif not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            why = "is not a file, dir or link"
        elif m.isreg() and m.size > DEB_FILE_MAX:
            why = f"is {m.size} bytes, more than {DEB_FILE_MAX}"
        if why:
            raise UserError(f"--deb {deb}: its entry {m.name!r:.200} {why}: refused")
        total += m.size if m.isreg() else 0
        if total > DEB_TOTAL_MAX:
            raise UserError(f"--deb {deb}: more than {DEB_TOTAL_MAX} bytes of files: refused")
        (links if m.issym() else regular if m.isreg() else set()).add(name)


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _wrap_tools(root: Path) -> None:
    tools = root / "tools"
    libs = ":".join(
        str(d) for d in (tools / "usr/lib/x86_64-linux-gnu", tools / "lib/x86_64-linux-gnu")
    )
    for prog in sorted(p for d in ("usr/bin", "usr/sbin") for p in (tools / d).glob("*")):
        if prog.is_file() and os.access(prog, os.X_OK):
            wrapper = root / "bin" / prog.name
            wrapper.parent.mkdir(exist_ok=True)
            wrapper.write_text(
                f'#!/bin/sh\nLD_LIBRARY_PATH="{libs}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" '
                f'exec "{prog}" "$@"\n'
            )
            wrapper.chmod(0o755)


def _restub(root: Path) -> None:
    for makefile in (root / "usr/src").glob("linux-headers-*/Makefile"):
        m = re.fullmatch(r"\s*include\s+(/\S+/Makefile)\s*", makefile.read_text(errors="replace"))
        if m and (root / m.group(1).lstrip("/")).is_file():
            makefile.write_text(f"include {root / m.group(1).lstrip('/')}\n")


def candidates(s: Session) -> list[Path]:
    """The header packages the next upgrade brings: for each installed
    ``linux-headers-FLAVOUR`` metapackage, the versioned package its candidate depends on,
    when that is not installed yet, with its ``-common`` and ``linux-kbuild``; fetched with
    ``apt-get download`` into the staging area. [] when every candidate is installed."""
    if s.paths.root != Path("/"):
        raise UserError("--candidates asks this system's apt: not with --root")
    installed = _installed_names()
    metas = [n for n in installed if re.fullmatch(r"linux-headers-[a-z][a-z0-9-]*", n)]
    wanted: list[str] = []
    for meta in metas:
        target = next((d for d in _candidate_depends(meta) if d.startswith("linux-headers-")), None)
        if target is None or target in installed or target in wanted:
            continue
        wanted.append(target)
        wanted += [
            d
            for d in _candidate_depends(target)
            if d.startswith(("linux-headers-", "linux-kbuild-")) and d not in installed
        ]
    if not wanted:
        return []
    dest = s.paths.preflight_dir / "debs"
    dest.mkdir(parents=True, exist_ok=True)
    apt_get = run.system_tool("apt-get", "apt")
    res = run.query([apt_get, "download", "-q", *wanted], cwd=dest, timeout=600)
    if res.returncode != 0:
        why = res.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
        raise EnvError(f"apt-get download {' '.join(wanted)} failed: {why[0]}")
    return [next(dest.glob(f"{name}_*.deb")) for name in wanted]


def _installed_names() -> set[str]:
    out = run.capture(
        [run.system_tool("dpkg-query", "dpkg"), "-W", "-f=${Package} ${db:Status-Abbrev}\\n"]
    )
    return {line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["ii"]}


def _candidate_depends(name: str) -> list[str]:
    try:
        out = run.capture([run.system_tool("apt-cache", "apt"), "show", "--no-all-versions", name])
    except run.CommandFailed:
        return []
    m = re.search(r"^Depends: (.*)$", out, re.M)
    return [d.strip().split()[0] for d in m.group(1).split(",")] if m else []


def incoming(text: str) -> list[Path]:
    """The kernel header packages (``linux-headers-*``, ``linux-kbuild-*``) in apt's
    Pre-Install-Pkgs input, and the incoming packages they depend on (pahole and its
    libraries: tools their build needs, that come in the same run). The input: version 2
    and 3 (``VERSION N``, apt's configuration, a blank line, then one line per package:
    its name first, its .deb file or **CONFIGURE** or **REMOVE** last) and version 1
    (.deb files alone)."""
    debs = _incoming_debs(text)
    want = {n for n in debs if n.startswith(("linux-headers-", "linux-kbuild-"))}
    todo = sorted(want)
    while todo:
        for dep in _depends(debs[todo.pop()]):
            if dep in debs and dep not in want and not dep.startswith("linux-image-"):
                want.add(dep)
                todo.append(dep)
    return [debs[n] for n in sorted(want)]


def _incoming_debs(text: str) -> dict[str, Path]:
    lines = text.splitlines()
    if lines[:1] and lines[0].startswith("VERSION "):
        lines = lines[lines.index("") + 1 :] if "" in lines else []
    found = {}
    for line in lines:
        fields = line.split()
        if fields and fields[-1].endswith(".deb"):
            name = fields[0] if len(fields) > 1 else Path(fields[-1]).name.split("_")[0]
            found[name] = Path(fields[-1])
    return found


def _depends(deb: Path) -> list[str]:
    """The names a package Depends and Pre-Depends on (every alternative)."""
    try:
        out = run.capture(
            [run.system_tool("dpkg-deb", "dpkg"), "-f", deb, "Depends", "Pre-Depends"]
        )
    except run.CommandFailed:
        return []
    text = " ".join(line.split(":", 1)[-1] for line in out.splitlines())
    return re.findall(r"(?:^|[,|]\s*)([a-z0-9][a-z0-9+.-]+)", text.strip())


def kernels_of(s: Session, releases: tuple[str, ...], dirs: tuple[Path, ...]) -> list[Kernel]:
    """``-k`` and ``--kernel-dir`` as elsewhere."""
    found = [kernel_mod.by_release(s.paths, r) for r in releases]
    found += [kernel_mod.load(d.absolute()) for d in dirs]
    for k in found:
        k.require_prepared()
    return found
