"""The on-disk record of packages, builds and installs, readable with ``ls``.

Layout under the state dir (``docs/reference/files.md`` is made from this block):

    packages/NAME/VERSION/source                symlink to /usr/src/NAME-VERSION (relative
                                                under --root)
    packages/NAME/VERSION/added.json            when, from where (relative to the root: a staged
                                                root can be moved or copied)
    packages/NAME/VERSION/hooks.log             output of POST_ADD, PRE/POST_INSTALL, POST_REMOVE
    packages/NAME/VERSION/source-index.json     per-file sha256 of the source, keyed by stat
    packages/NAME/VERSION/built/KVER/ARCH/
        module/DEST_NAME.ko[.gz|.xz|.zst]       stripped, signed, compressed: what gets installed
        build.json                              modules + sha256, compiler, reproducer, seconds
        make.log                                the build's full log
    installed/KVER/ARCH/NAME.json               each installed file, its sha256, saved original
    originals/KVER/ARCH/NAME/PATH               in-tree modules an install replaced
    build/NAME/VERSION/KVER/                    kept build dir: dkms/ (the dkms_tree), .extmod/
                                                (make shim, LD wrapper, sync manifest, the kept
                                                dkms.conf evaluation, failed.json), build.log
    build/NAME/_adhoc/KVER/                     same, for bare kbuild dirs
    thinlto-cache/                              default ThinLTO cache base (as root)
    store/DD/DIGEST/                            the build store: a finished build by its inputs
                                                digest, object.json + modules/ as make left them
    keys/mok.key, keys/mok.pub                  module signing key pair (0600 key, 0700 dir)
    journal/KVER/ARCH/NAME.json                 an install or uninstall under way (see Guarantees)
    journal/KVER/depmod                         the module tree changed since depmod last ran
    locks/                                      flock(2) files: packages, pair/KVER/NAME,
                                                kernel/KVER
    compilers.json                              `--version` lines of compilers, keyed by their stat
    dkms-imported/NAME/                         DKMS's record of a package import-dkms took over

Every change is a temp file or dir renamed into place (``atomic``); a change to
/lib/modules is journaled first (``install``), so a re-run finishes or rolls it back.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from extmod.core import atomic
from extmod.core.errors import UserError
from extmod.core.paths import Paths
from extmod.store import schema

_WORD = r"[A-Za-z0-9][A-Za-z0-9_.+~-]*"
_SPEC = re.compile(rf"^(?P<name>{_WORD})(?:/(?P<version>{_WORD}))?$")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Added:
    name: str
    version: str
    source: Path

    @property
    def ident(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class BuiltModule:
    built_name: str
    dest_name: str
    dest_location: str
    file: str  # name of the file in the module/ dir
    sha256: str


@dataclass(frozen=True)
class BuildRecord:
    """``build.json``: one finished build. Written by ``build`` (a compile) and by
    ``migrate`` (a DKMS build taken over, ``imported_from`` set); read by ``freshness`` (is
    it current: ``kernel_identity`` and ``inputs``; what it exports; what would not load).
    The fields after ``modules`` are optional: a record of an older release reads."""

    name: str
    version: str
    kernel: str
    arch: str
    built: str  # when, UTC (state.now)
    modules: tuple[BuiltModule, ...]
    kernel_tree: str | None = None
    kernel_identity: str | None = None
    inputs: str | None = None  # digest of everything the build depended on
    load_check: tuple[str, ...] = ()  # problems: "x.ko: unknown symbol y ..."
    exports: tuple[str, ...] = ()  # symbols its modules export (BUILD_DEPENDS users)
    compiler: str | None = None
    reproducer: str | None = None
    make_vars: tuple[str, ...] = ()
    signed: bool | None = None
    compressed: str | None = None  # ".xz", ".gz", ".zst"
    thinlto_cache_dir: str | None = None
    seconds: float | None = None
    started_at: float | None = None
    imported_from: str | None = None  # DKMS's module/ dir, for a build import-dkms took
    from_store: str | None = None  # the build store's object (its digest) it was made from

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["modules"] = [asdict(m) for m in self.modules]
        for key in ("load_check", "exports", "make_vars"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_json(cls, data: object, where: Path) -> BuildRecord:
        """``build.json`` read back: every field checked (``schema``); unknown fields, as a
        newer release may write, are left out."""
        r = schema.Fields(where, data)
        name, version = r.name("name"), r.name("version")
        kernel, arch, built = r.text("kernel"), r.text("arch"), r.text("built")
        modules = tuple(
            BuiltModule(
                built_name=m.text("built_name"),
                dest_name=m.text("dest_name"),
                dest_location=m.location("dest_location"),
                file=_file_name(m, "file"),
                sha256=m.sha256("sha256"),
            )
            for m in r.objects("modules")
        )
        return cls(
            name=name,
            version=version,
            kernel=kernel,
            arch=arch,
            built=built,
            modules=modules,
            kernel_tree=r.opt_text("kernel_tree"),
            kernel_identity=r.opt_text("kernel_identity"),
            inputs=r.opt_text("inputs"),
            load_check=r.texts("load_check"),
            exports=r.texts("exports"),
            compiler=r.opt_text("compiler"),
            reproducer=r.opt_text("reproducer"),
            make_vars=r.texts("make_vars"),
            signed=r.boolean("signed"),
            compressed=r.opt_text("compressed"),
            thinlto_cache_dir=r.opt_text("thinlto_cache_dir"),
            seconds=r.number("seconds"),
            started_at=r.number("started_at"),
            imported_from=r.opt_text("imported_from"),
            from_store=r.opt_text("from_store"),
        )


def _file_name(r: schema.Fields, key: str) -> str:
    """A file name in one dir (a built module in ``module/``)."""
    value = r.text(key)
    if not schema.confined(value) or "/" in value:
        raise r.bad(key, f"{value[:200]!r} is not a file name: refused")
    return value


@dataclass(frozen=True)
class Built:
    name: str
    version: str
    kver: str
    arch: str
    dir: Path
    record: BuildRecord

    @property
    def modules(self) -> tuple[BuiltModule, ...]:
        return self.record.modules


@dataclass(frozen=True)
class InstalledFile:
    path: str  # relative to /lib/modules/KVER
    sha256: str
    original: str | None  # relative to the originals dir, when one was saved
    shadows: tuple[str, ...]  # same-named modules elsewhere in the kernel's tree
    # (size, mtime_ns, ctime_ns) of the file once in place: status hashes it only when
    # these differ; ctime cannot be set back by a user (records written before this field
    # have none: hashed each time)
    stamp: tuple[int, int, int] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Installed:
    name: str
    version: str
    kver: str
    arch: str
    files: tuple[InstalledFile, ...]
    created_dirs: tuple[str, ...]  # relative to /lib/modules/KVER, deepest last
    # Modules of the build left out because they would not load ("x.ko: unknown symbol
    # y: ..."), one load-check problem each (install.load_check = "per-module").
    withheld: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The install record's JSON (installed.json, and the journal's "record")."""
        return {
            "name": self.name,
            "version": self.version,
            "kernel": self.kver,
            "arch": self.arch,
            "created_dirs": list(self.created_dirs),
            "files": [
                {
                    "path": f.path,
                    "sha256": f.sha256,
                    "original": f.original,
                    "shadows": list(f.shadows),
                    **({"stamp": list(f.stamp)} if f.stamp else {}),
                }
                for f in self.files
            ],
            "withheld": list(self.withheld),
        }

    @classmethod
    def from_json(cls, data: object, where: Path) -> Installed:
        """An install record (``installed/KVER/ARCH/NAME.json``, a journal's ``record``) read
        back: every path in it confined to the tree it is relative to, as at install time
        (issue 22: an edited record must not make uninstall delete a file elsewhere)."""
        r = schema.Fields(where, data)
        name, version = r.name("name"), r.name("version")
        files = tuple(
            InstalledFile(
                path=str(f.rel_path("path")),
                sha256=f.sha256("sha256"),
                original=f.rel_path("original", optional=True),
                shadows=f.texts("shadows"),
                stamp=f.stamp("stamp"),
            )
            for f in r.objects("files")
        )
        return cls(
            name,
            version,
            r.text("kernel"),
            r.text("arch"),
            files,
            r.texts("created_dirs", paths=True),
            r.texts("withheld"),
        )


def by_module(problems: Iterable[str]) -> dict[str, list[str]]:
    """Load-check problems ("x.ko: what") grouped by their module, in order: one line per
    module wherever they are shown (issue 22: one per symbol)."""
    grouped: dict[str, list[str]] = {}
    for p in problems:
        module, _, what = p.partition(": ")
        grouped.setdefault(module, []).append(what)
    return grouped


def _in_root(root: Path, path: Path) -> str | None:
    """``path`` relative to ``root`` ("usr/src/x-1"), when it is below a root that is not
    /."""
    if root == Path("/") or not path.is_relative_to(root):
        return None
    return str(path.relative_to(root))


def parse_spec(spec: str) -> tuple[str, str | None]:
    m = _SPEC.match(spec)
    if not m:
        if spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1:
            raise UserError(f"{spec}: no such directory")  # a source dir, not a name
        raise UserError(f"{spec!r}: expected NAME or NAME/VERSION")
    return m.group("name"), m.group("version")


def _versions_in(ndir: Path) -> list[str]:
    found = [v.name for v in ndir.iterdir()] if ndir.is_dir() else []
    return sorted((v for v in found if not v.startswith(".")), key=_version_key)


class State:
    def __init__(self, paths: Paths):
        self.paths = paths
        self.dir = paths.state_dir

    # -- locks ----------------------------------------------------------------------------
    def lock(self, what: str, say: Callable[[str], None]) -> AbstractContextManager[None]:
        """Hold the flock(2) lock ``what``: "packages" (adding and removing registrations),
        "pair/KVER/NAME" (building and installing one package for one kernel) or
        "kernel/KVER" (changing /lib/modules/KVER, its journal and depmod). Take them in
        that order. A lock that is held is waited for, with a message naming its holder;
        the kernel drops it if the holder dies, however it dies."""
        return _flock(self.dir / "locks" / f"{what}.lock", what, say)

    # -- journal --------------------------------------------------------------------------
    def journal_file(self, kver: str, arch: str, name: str) -> Path:
        return self.dir / "journal" / kver / arch / f"{name}.json"

    def journals(self, kver: str | None = None) -> list[tuple[str, Path]]:
        """Pending (kver, journal file) entries, of one kernel or all."""
        root = self.dir / "journal"
        if not root.is_dir():
            return []
        kdirs = [root / kver] if kver else sorted(root.iterdir())
        return [(k.name, f) for k in kdirs if k.is_dir() for f in sorted(k.glob("*/*.json"))]

    def clear_journal(self, entry: Path) -> None:
        """Remove a journal entry (or the depmod marker) and the dirs it leaves empty."""
        entry.unlink(missing_ok=True)
        root = self.dir / "journal"
        d = entry.parent
        while d != root and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent

    def staging_file(self, kver: str, name: str) -> Path:
        """The list of an upgrade's staged module files (deploy.install.stage)."""
        return self.dir / "journal" / kver / f"{name}.staged"

    def depmod_marker(self, kver: str) -> Path:
        return self.dir / "journal" / kver / "depmod"

    def kernels_needing_depmod(self) -> list[str]:
        root = self.dir / "journal"
        found = root.iterdir() if root.is_dir() else iter(())
        return sorted(k.name for k in found if (k / "depmod").exists())

    # -- added packages -------------------------------------------------------------------
    def package_dir(self, name: str, version: str) -> Path:
        return self.dir / "packages" / name / version

    def add(self, name: str, version: str, source: Path) -> tuple[Added, bool]:
        """Register a source dir. Returns (record, newly added)."""
        final = self.package_dir(name, version)
        existing = self.find_added(name, version)
        if existing is not None:
            if existing.source != source:
                raise UserError(
                    f"{name}/{version} is already added from {existing.source}; "
                    f"remove it first to add it from {source}"
                )
            return existing, False
        tmp = atomic.new_dir_beside(final)
        # Under the root, both relative (issue 22): a staged root moved or copied
        # elsewhere still names its own /usr/src, never the place it was made in.
        inside = _in_root(self.paths.root, source)
        (tmp / "source").symlink_to(
            os.path.relpath(source, final) if inside is not None else source
        )
        atomic.write_json(
            tmp / "added.json",
            {
                "name": name,
                "version": version,
                "source": inside if inside is not None else str(source),
                "added": now(),
            },
        )
        atomic.replace_dir(tmp, final)
        return Added(name, version, source), True

    def find_added(self, name: str, version: str) -> Added | None:
        where = self.package_dir(name, version) / "added.json"
        if (data := schema.load(where)) is None:
            return None
        r = schema.Fields(where, data)
        r.same(name=name, version=version)
        source = r.text("source")
        if source.startswith("/"):  # outside the root (or the root is /)
            return Added(name, version, Path(source))
        if not schema.confined(source):
            raise r.bad("source", f"{source[:200]!r} leads out of the root: refused")
        return Added(name, version, self.paths.root / source)

    def all_added(self) -> list[Added]:
        root = self.dir / "packages"
        found: list[Added] = []
        if not root.is_dir():
            return found
        for ndir in sorted(root.iterdir()):
            if ndir.name.startswith("."):
                continue
            for vdir in sorted(ndir.iterdir(), key=lambda p: _version_key(p.name)):
                if vdir.name.startswith("."):
                    continue
                rec = self.find_added(ndir.name, vdir.name)
                if rec:
                    found.append(rec)
        return found

    def versions_of(self, name: str, version: str | None = None) -> list[Added]:
        """The added versions of ``name`` (just ``version``, if given), oldest first; only
        that package's dir is read."""
        versions = [version] if version is not None else _versions_in(self.dir / "packages" / name)
        return [rec for v in versions if (rec := self.find_added(name, v)) is not None]

    def select(self, spec: str) -> list[Added]:
        """NAME (every added version), NAME/VERSION, or the source dir a package was added
        from (as pacman's hook names it); an error if none is added."""
        if os.path.isabs(spec):
            where = Path(spec).resolve()
            chosen = [a for a in self.all_added() if a.source.resolve() == where]
            if not chosen:
                raise UserError(f"{spec}: no added package has this source dir")
            return chosen
        name, version = parse_spec(spec)
        chosen = self.versions_of(name, version)
        if not chosen:
            raise UserError(
                f"{spec}: not added (extmod add SRC_DIR, or "
                f"/usr/src/{name}-VERSION with NAME/VERSION)"
            )
        return chosen

    def unregister(self, name: str, version: str) -> None:
        """Not added from now on; the rest stays for ``drop_added`` (issue 32)."""
        (self.package_dir(name, version) / "added.json").unlink(missing_ok=True)

    def drop_added(self, name: str, version: str) -> None:
        atomic.remove_dir(self.package_dir(name, version))
        parent = self.dir / "packages" / name
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()

    # -- builds ---------------------------------------------------------------------------
    def finished_dir(self, name: str, version: str, kver: str, arch: str) -> Path:
        return self.package_dir(name, version) / "built" / kver / arch

    def publish_built(self, tmp: Path, name: str, version: str, kver: str, arch: str) -> Path:
        final = self.finished_dir(name, version, kver, arch)
        atomic.replace_dir(tmp, final)
        return final

    def find_built(self, name: str, version: str, kver: str, arch: str) -> Built | None:
        d = self.finished_dir(name, version, kver, arch)
        info = schema.load(d / "build.json")
        if info is None:
            return None
        record = BuildRecord.from_json(info, d / "build.json")
        return Built(name, version, kver, arch, d, record)

    def builds(self, name: str, version: str) -> list[Built]:
        root = self.package_dir(name, version) / "built"
        found: list[Built] = []
        if not root.is_dir():
            return found
        for kdir in sorted(root.iterdir()):
            for adir in sorted(kdir.iterdir()) if kdir.is_dir() else []:
                b = self.find_built(name, version, kdir.name, adir.name)
                if b:
                    found.append(b)
        return found

    def drop_built(self, name: str, version: str, kver: str, arch: str) -> bool:
        d = self.finished_dir(name, version, kver, arch)
        if not d.exists():
            return False
        atomic.remove_dir(d)
        for parent in (d.parent, d.parent.parent):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        return True

    # -- installs -------------------------------------------------------------------------
    def verify_dir(self, kver: str) -> Path:
        """The records ``extmod verify`` leaves for a kernel (ARCH/NAME.json)."""
        return self.dir / "verify" / kver

    def installed_file(self, kver: str, arch: str, name: str) -> Path:
        return self.dir / "installed" / kver / arch / f"{name}.json"

    def originals_dir(self, kver: str, arch: str, name: str) -> Path:
        return self.dir / "originals" / kver / arch / name

    def find_installed(self, kver: str, arch: str, name: str) -> Installed | None:
        f = self.installed_file(kver, arch, name)
        data = schema.load(f)
        if data is None:
            return None
        if isinstance(data, dict):  # the file's place names these
            data = {**data, "kernel": kver, "arch": arch}
        return Installed.from_json(data, f)

    def all_installed(self, kver: str | None = None) -> list[Installed]:
        root = self.dir / "installed"
        found: list[Installed] = []
        if not root.is_dir():
            return found
        for kdir in sorted(root.iterdir()):
            if kver is not None and kdir.name != kver:
                continue
            for adir in sorted(kdir.iterdir()):
                for f in sorted(adir.glob("*.json")):
                    rec = self.find_installed(kdir.name, adir.name, f.stem)
                    if rec:
                        found.append(rec)
        return found

    def installs_of(self, name: str, kvers: Iterable[str] | None = None) -> list[Installed]:
        """A package's installs: one file lookup per kernel, not a read of every record."""
        root = self.dir / "installed"
        found: list[Installed] = []
        if not root.is_dir():
            return found
        wanted = None if kvers is None else set(kvers)
        for kdir in sorted(root.iterdir()):
            if wanted is not None and kdir.name not in wanted:
                continue
            for adir in sorted(kdir.iterdir()):
                rec = self.find_installed(kdir.name, adir.name, name)
                if rec:
                    found.append(rec)
        return found

    def write_installed(self, rec: Installed) -> None:
        atomic.write_json(
            self.installed_file(rec.kver, rec.arch, rec.name),
            {**rec.to_json(), "installed": now()},
        )

    def drop_installed(self, kver: str, arch: str, name: str) -> None:
        f = self.installed_file(kver, arch, name)
        f.unlink(missing_ok=True)
        for parent in (f.parent, f.parent.parent):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()


@contextmanager
def try_lock(state: State, what: str) -> Iterator[bool]:
    """``State.lock`` without waiting: yields whether it was had (a prune skips what a
    build holds)."""
    fd = _lock_file(state.dir / "locks" / f"{what}.lock")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


@contextmanager
def _flock(path: Path, what: str, say: Callable[[str], None]) -> Iterator[None]:
    fd = _lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
            say(f"waiting for lock {what}: held by {holder or 'another extmod'}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: extmod {' '.join(sys.argv[1:])}"[:300].encode(), 0)
        yield
    finally:
        os.close(fd)


def _version_key(text: str) -> tuple[tuple[int, str], ...]:
    """Sort versions as people read them: 1.10 after 1.9."""
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.+~-]", text))


def newest(records: list[Added]) -> Added:
    return max(records, key=lambda a: _version_key(a.version))
