"""Which packages are registered: add (a source dir copied to /usr/src/NAME-VERSION, or a
NAME/VERSION already there), remove once no build is left, and what a NAME[/VERSION] on
the command line means. Also the package's own scripts (POST_ADD, PRE/POST_INSTALL,
POST_REMOVE), run with DKMS's variables."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from extmod.core import atomic, digest, files, run
from extmod.core.errors import EnvError, ExtmodError, ScriptError, UserError
from extmod.kernel import kernel as kernel_mod
from extmod.kernel.kernel import Kernel
from extmod.ops.session import Outcome, Session
from extmod.source import package, rules, scripts, sourcetree
from extmod.source.context import NO_KERNEL, conf_kernel, dkms_context
from extmod.source.package import ConfKernel
from extmod.store.state import Added, parse_spec


def add(s: Session, what: str) -> Added:
    """SRC_DIR (copied to /usr/src/NAME-VERSION unless it is there) or NAME/VERSION.
    Everything is checked before anything is written or locked."""
    name, version, dest, copy_from = check_add(s, what)
    with s.state.lock("packages", s.say):
        if copy_from is not None:
            _copy_source(copy_from, dest, name, version)
        added, new = s.state.add(name, version, dest.absolute())
    if new:
        s.say(f"added {added.ident} from {dest}")
        s.record(Outcome(added.ident, "", "added"))
        script = _directive(s, added, "POST_ADD")
        if script:
            run_script(s, added, "POST_ADD", script, None)
    return added


def check_add(s: Session, what: str) -> tuple[str, str, Path, Path | None]:
    """(name, version, /usr/src dir, the dir to copy there or None)."""
    src = Path(what)
    if src.is_dir():
        return _check_source_dir(s, src, what)
    name, maybe_version = parse_spec(what)
    if maybe_version is None:
        raise UserError(f"{what}: give NAME/VERSION or a source dir")
    dest = s.paths.source_tree / f"{name}-{maybe_version}"
    conf = dest / "dkms.conf"
    sourcetree.require_regular(conf)
    sourcetree.check_links(dest)
    got = package.identify(conf, context(s))
    if got != (name, maybe_version):
        raise UserError(
            f"{conf}: PACKAGE_NAME/PACKAGE_VERSION say {got[0]}/{got[1]}, "
            f"not {name}/{maybe_version}"
        )
    _validate(s, dest)
    return name, maybe_version, dest, None


def _check_source_dir(s: Session, src: Path, what: str) -> tuple[str, str, Path, Path | None]:
    conf = src / "dkms.conf"
    if conf.exists() or conf.is_symlink():
        sourcetree.require_regular(conf)  # a FIFO, a dir, a device: named, never read
    else:
        raise UserError(
            f"{conf}: no such file (a bare kbuild dir can only be "
            f"built: extmod build {what} -k KVER)"
        )
    sourcetree.check_links(src)
    name, version = package.identify(conf, context(s))
    _validate(s, src)
    dest = s.paths.source_tree / f"{name}-{version}"
    if src.resolve() == dest.resolve():
        return name, version, dest, None
    if dest.exists():
        if digest.tree(src) == digest.tree(dest):
            return name, version, dest, None  # the same tree again: use it
        raise UserError(
            f"{dest} already exists with other content: add "
            f"{name}/{version} to use it, or remove {name}/{version} "
            f"and delete it first"
        )
    return name, version, dest, src


def _copy_source(src: Path, dest: Path, name: str, version: str) -> None:
    if dest.exists():
        raise UserError(f"{dest} already exists: add {name}/{version} to use it")
    tmp = atomic.new_dir_beside(dest)
    try:
        # As a build copies it (files.tree_entries): a symlink in the tree is copied as
        # what it points to (a package may link to a sibling dir), one that leads out of
        # the tree stays a link (Debian's README.gz -> /usr/share/doc/…), a dangling one
        # is left out.
        top = src.resolve()
        for rel, path, link in files.tree_entries(src):
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if link is not None:
                out.symlink_to(link)
            else:
                shutil.copy2(path, out)
        for dirpath, dirnames, _ in os.walk(top):  # empty dirs too, as copytree made them
            for d in dirnames:
                if not (Path(dirpath) / d).is_symlink():
                    (tmp / Path(dirpath, d).relative_to(top)).mkdir(parents=True, exist_ok=True)
    except (OSError, shutil.Error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EnvError(f"cannot copy {src} to {dest}: {str(e).splitlines()[0][:200]}") from None
    atomic.replace_dir(tmp, dest)


def _validate(s: Session, src: Path) -> None:
    """Read dkms.conf as a build would, before anything is written (DKMS's add does the
    same for the running kernel): for the newest kernel here, or for none."""
    kernels = kernel_mod.usable(s.paths)
    conf = conf_kernel(kernels[-1]) if kernels else NO_KERNEL
    package.load(src, conf, context(s))


def autoinstalls_headerless(s: Session, added: Added, kver: str, arch: str) -> bool:
    """AUTOINSTALL of ``added`` as its dkms.conf reads for a kernel whose headers are not
    here (DKMS's autoinstall reads it so before it looks for them); a dkms.conf that does
    not read counts as yes: the missing headers are what to say."""
    conf = dataclasses.replace(NO_KERNEL, kver=kver, arch=arch, version=rules.version_tuple(kver))
    ctx = dkms_context(s.paths, s.config, added.name, added.version, kver, user=s.build_user)
    try:
        return package.load(added.source, conf, ctx).autoinstall
    except ExtmodError:
        return True


def context(s: Session) -> package.Context:
    """The context dkms.conf is read in before its package is known (add, identify)."""
    return dkms_context(s.paths, s.config, user=s.build_user)


def resolve(s: Session, what: str) -> list[Added]:
    """What a verb acts on: a source dir (added if needed), NAME/VERSION or NAME."""
    if Path(what).is_dir():
        return [add(s, what)]
    name, version = parse_spec(what)
    if version is not None and s.state.find_added(name, version) is None:
        return [add(s, what)]  # DKMS: build/install add from /usr/src if needed
    return s.state.select(what)


def unregister(s: Session, added: Added) -> None:
    """Forget the package once no build of it is left."""
    with s.state.lock("packages", s.say):
        if (
            s.state.builds(added.name, added.version)
            or s.state.find_added(added.name, added.version) is None
        ):
            return
        s.state.unregister(added.name, added.version)
        s.say(f"removed {added.ident}")
        s.record(Outcome(added.ident, "", "removed"))


def drop_unregistered(s: Session, added: Added) -> None:
    """What is left of a package once unregistered: its dir in the state, its build
    dirs, a binaries-only package's dkms.conf. Called once no command beside this one can
    be building it (each pair's lock had after the unregister), since a build that found
    it added before runs make in its build dir and files into its dir (issue 32); left
    alone when the package was added again meanwhile."""
    with s.state.lock("packages", s.say):
        if s.state.find_added(added.name, added.version) is not None:
            return
        s.state.drop_added(added.name, added.version)
        build_root = s.paths.dkms_tree(added.name, added.version, None)
        shutil.rmtree(build_root, ignore_errors=True)
        if build_root.parent.is_dir() and not any(build_root.parent.iterdir()):
            build_root.parent.rmdir()
        if added.source.parent == s.paths.binaries_only:  # a binaries-only package's conf
            shutil.rmtree(added.source, ignore_errors=True)


def _directive(s: Session, added: Added, name: str) -> str:
    """A kernel-less directive (POST_ADD, POST_REMOVE) as dkms.conf sets it."""
    conf = added.source / "dkms.conf"
    values = package.evaluate(conf, None, context(s), added.name, added.version)
    return values.get(name, {}).get(0, "")


def _mentions(s: Session, conf: Path, word: str) -> bool:
    """Whether dkms.conf or an /etc/dkms file names ``word`` at all: a bash run per
    package is what made removing hundreds of packages slow."""
    files = [conf]
    if s.paths.etc_dkms.is_dir():
        files += [f for f in s.paths.etc_dkms.iterdir() if f.is_file()]
    for f in files:
        try:
            if word.encode() in f.read_bytes():
                return True
        except OSError:
            return True
    return False


def post_remove(s: Session, added: Added, kver: str, arch: str) -> None:
    """POST_REMOVE, after the package's modules were taken out of a kernel (DKMS 3.0.10's
    and 3.2.2's do_uninstall run it there, with $kernelver; not on remove or unbuild of
    what is not installed). The uninstall is done: a script that fails is a warning (DKMS
    does not look at its status)."""
    conf = added.source / "dkms.conf"
    if not conf.is_file() or not _mentions(s, conf, "POST_REMOVE"):
        return
    try:
        script = _directive(s, added, "POST_REMOVE")
        if script:
            headerless = dataclasses.replace(
                NO_KERNEL, kver=kver, arch=arch, version=rules.version_tuple(kver)
            )
            run_script(s, added, "POST_REMOVE", script, headerless)
    except ExtmodError as e:
        s.say(f"warning: {e}")
        s.notes.append(str(e))


def run_script(
    s: Session, added: Added, kind: str, script: str, kernel: Kernel | ConfKernel | None
) -> None:
    """One of the package's scripts, logged in its hooks.log, with DKMS's variables (a
    kernel's, when one is given: its headers, or only its release)."""
    ctx = dkms_context(
        s.paths,
        s.config,
        added.name,
        added.version,
        kernel.kver if isinstance(kernel, ConfKernel) else kernel.release if kernel else None,
    )
    conf = kernel if isinstance(kernel, ConfKernel) else conf_kernel(kernel) if kernel else None
    values = package.shell_vars(conf, ctx, added.name, added.version)
    log = s.state.package_dir(added.name, added.version) / "hooks.log"
    with open(log, "a") as f:
        f.write(f"# {kind}: {script}\n")
        start = f.tell()
    try:
        # PRE/POST_INSTALL belong to the install step (root); the others are the
        # package's own scripts and run as the build user, if there is one.
        user = None if kind.endswith("_INSTALL") else s.build_user
        run.run_logged(
            scripts.script_argv(values, added.source, script),
            log=log,
            cwd=added.source,
            echo=s.echo,
            user=user,
        )
    except run.CommandFailed as e:
        _show(s, kind, log, start)
        raise ScriptError(
            f"{kind} script of {added.ident} failed with exit {e.returncode} (log: {log})"
        ) from None
    _show(s, kind, log, start)


def _show(s: Session, kind: str, log: Path, start: int) -> None:
    """The script's output, from its part of hooks.log, to whoever shows it."""
    if s.scripts_shown is None:
        return
    with open(log, "rb") as f:
        f.seek(start)
        s.scripts_shown(kind, f.read(1 << 20).decode("utf-8", "replace"))
