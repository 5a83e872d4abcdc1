"""``/var/lib/dkms`` as a read-only view of extmod's state (issue 33), for the tools that
read DKMS's tree instead of running ``dkms status``, and so that what the ``dkms`` command
says about that tree is true.

Made, only where extmod is the system's ``dkms`` (``ROOT/usr/sbin/dkms`` is extmod's), from
the state tree after every command that can change it (``ops/commands.bracket``), and
never written by hand: each package dir is made again whole. What it holds, all symlinks
into the state tree (DKMS's layout, dkms(8) "dkms_tree"):

    NAME/VERSION/source                 the package's source (as DKMS: /usr/src/NAME-VERSION)
    NAME/VERSION/build                  the newest build's kept build dir (as make left it)
    NAME/VERSION/KVER/ARCH/module       the finished build's modules (STATE/.../module)
    NAME/VERSION/KVER/ARCH/log/make.log the build's log
    NAME/kernel-KVER-ARCH               VERSION/KVER/ARCH, where that version is installed
    mok.key, mok.pub                    the signing pair extmod signs with by default
    post_transaction.log                framework.conf's post_transaction output
    .extmod-view                        says what this dir is

A ``/var/lib/dkms`` that DKMS itself keeps (a package record under it and no
``.extmod-view``: DKMS is installed beside extmod, or ``import-dkms --keep-dkms``) is left
alone. DKMS's own mok.key and mok.pub, which import-dkms adopts, stay where they are.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from extmod.core.paths import Paths
from extmod.store.state import State

MARKER = ".extmod-view"
_SAYS = (
    "This dir is made by extmod from its state ({state}) after every command:\n"
    "a change made here is undone by the next one. Read it; do not write it.\n"
)


def wanted(paths: Paths) -> bool:
    """Whether this root gets the view: extmod is its dkms, its state is the root's own (not
    a ``--dkmstree`` elsewhere), and the tree is not DKMS's."""
    if paths.state_dir != paths.root / "var/lib/extmod":
        return False
    dkms = paths.root / "usr/sbin/dkms"
    try:
        if b"extmod" not in dkms.read_bytes()[:4096]:
            return False
    except OSError:
        return False
    tree = paths.dkms_records
    if (tree / MARKER).is_file() or not tree.exists():
        return True
    return not any(  # DKMS's leftovers only (its mok pair): no package record
        os.path.lexists(v / "source") for d in _dirs(tree) for v in _dirs(d)
    )


def _dirs(d: Path) -> list[Path]:
    return [x for x in d.iterdir() if x.is_dir() and not x.is_symlink()]


def _ours(d: Path) -> bool:
    """A dir the view made: links and dirs only (DKMS's leftovers hold files)."""
    return all(p.is_symlink() or p.is_dir() for p in d.rglob("*"))


def sync(paths: Paths) -> None:
    """Make the view again from the state tree (when ``wanted``)."""
    if not wanted(paths):
        return
    tree = paths.dkms_records
    tree.mkdir(parents=True, exist_ok=True)
    state = State(paths)
    with state.lock("dkms-view", lambda _: None):
        _sync(paths, state, tree)


def _sync(paths: Paths, state: State, tree: Path) -> None:
    for d in tree.glob(".*.*"):  # what a sync that was killed left
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)
    marker = tree / MARKER
    if not marker.is_file():
        marker.write_text(_SAYS.format(state=paths.state_dir))
    names = sorted({a.name for a in state.all_added()})
    for name in names:
        _package(paths, state, tree, name)
    for d in _dirs(tree):
        if not d.name.startswith(".") and d.name not in names and _ours(d):
            shutil.rmtree(d)  # a package extmod no longer has
    for link, target in (
        ("mok.key", paths.keys_dir / "mok.key"),
        ("mok.pub", paths.keys_dir / "mok.pub"),
        ("post_transaction.log", paths.post_transaction_log),
    ):
        _link_file(tree / link, target)


def _package(paths: Paths, state: State, tree: Path, name: str) -> None:
    """NAME's dir, made whole beside the old one and renamed over it."""
    new = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=tree))
    try:
        for added in state.versions_of(name):
            vdir = new / added.version
            vdir.mkdir()
            _symlink(vdir / "source", _source_target(paths, state, added.name, added.version))
            builds = state.builds(added.name, added.version)
            last = max(builds, key=lambda b: b.record.built, default=None)
            if last is not None:  # DKMS's one build dir: the newest build's, as make left it
                work = paths.dkms_tree(added.name, added.version, last.kver)
                _symlink(vdir / "build", work / added.name / added.version / "build")
            for b in builds:
                adir = vdir / b.kver / b.arch
                (adir / "log").mkdir(parents=True)
                _symlink(adir / "module", b.dir / "module")
                _symlink(adir / "log" / "make.log", b.dir / "make.log")
        for rec in state.installs_of(name):
            _symlink(new / f"kernel-{rec.kver}-{rec.arch}", Path(rec.version, rec.kver, rec.arch))
        new.chmod(0o755)
        old = tree / name
        if old.exists() or old.is_symlink():
            gone = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=tree))
            old.rename(gone / name)
            new.rename(old)
            shutil.rmtree(gone)
        else:
            new.rename(old)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def _source_target(paths: Paths, state: State, name: str, version: str) -> Path:
    """Where the package's source is, as DKMS's link names it (relative under --root)."""
    link = state.package_dir(name, version) / "source"
    real = Path(os.path.realpath(link))
    if paths.root == Path("/"):
        return real
    return Path(os.path.relpath(real, paths.dkms_records / name / version))


def _symlink(link: Path, target: Path) -> None:
    link.symlink_to(target)


def _link_file(link: Path, target: Path) -> None:
    """A top-level link to a state file; a real file there (DKMS's own) is kept."""
    if link.exists() and not link.is_symlink():
        return
    if not target.exists():
        if link.is_symlink():
            link.unlink()
        return
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(f".{link.name}.extmod-tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.rename(link)
