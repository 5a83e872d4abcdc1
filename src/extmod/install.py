"""Turn built modules into installed ones: strip, sign, compress; install atomically; keep
the in-tree modules an install replaces and put them back; run depmod once per kernel."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from extmod import atomic, digest, faults, run
from extmod.config import Config
from extmod.errors import EnvError, UserError
from extmod.kernel import Kernel
from extmod.paths import Paths
from extmod.state import Built, BuiltModule, Installed, InstalledFile, State

# CONFIG_MODULE_COMPRESS_* → (suffix, argv that compresses FILE into FILE+suffix). The flags
# are those of the kernel's own scripts/Makefile.modinst (Linux 6.1).
_COMPRESSORS = (
    ("CONFIG_MODULE_COMPRESS_GZIP", ".gz", ["gzip", "-9nf"]),
    ("CONFIG_MODULE_COMPRESS_XZ", ".xz", ["xz", "-f", "--check=crc32", "--lzma2=dict=1MiB"]),
    ("CONFIG_MODULE_COMPRESS_ZSTD", ".zst", ["zstd", "-q", "-f", "-T0", "--rm"]),
)
_SUFFIXES = (".ko", ".ko.gz", ".ko.xz", ".ko.zst")

# Where DKMS 3.0.10 (override_dest_module_location) puts every module, by distribution ID
# from os-release; other distributions get DEST_MODULE_LOCATION as written.
_DISTRO_LOCATIONS = (
    (("debian", "ubuntu", "arch"), "/updates/dkms"),
    (("fedora", "rhel", "ovm"), "/extra"),
    (("sles", "suse", "opensuse"), "/updates"),
)


@dataclass(frozen=True)
class Signer:
    sign_file: Path
    key: Path
    cert: Path
    hash: str


def compression(kernel: Kernel) -> tuple[str, list[str]] | None:
    for symbol, suffix, argv in _COMPRESSORS:
        if kernel.config.get(symbol) == "y":
            return suffix, argv
    return None


def signer(kernel: Kernel, config: Config, paths: Paths) -> tuple[Signer | None, str | None]:
    """The signer for a CONFIG_MODULE_SIG kernel (None otherwise) and a note if signing is
    wanted but impossible. A key pair is made with openssl on first use: the key is 0600
    from its creation and an existing key or certificate is never overwritten."""
    if kernel.config.get("CONFIG_MODULE_SIG") != "y":
        return None, None
    sign_file = kernel.build_dir / "scripts/sign-file"
    if config.sign_file:
        sign_file = Path(
            config.sign_file.replace("${kernelver}", kernel.release).replace(
                "$kernelver", kernel.release
            )
        )
    if not os.access(sign_file, os.X_OK):
        return None, f"{sign_file} not found: modules are not signed"
    key, cert = key_pair(config, paths)
    if not key.exists() and not cert.exists():
        if config.sign_key or config.sign_cert:
            raise UserError(f"sign.key: {key} does not exist")
        _make_key_pair(key, cert)
    for what, f in (("sign.key", key), ("sign.cert", cert)):
        if not f.exists():
            raise UserError(f"{what}: {f} does not exist (the other half of the pair does)")
    check_key(key)
    hash_name = kernel.config.get("CONFIG_MODULE_SIG_HASH") or "sha512"
    return Signer(sign_file, key, cert, hash_name), None


def keys_dir(paths: Paths) -> Path:
    """Where the default pair lives (made on first use, or adopted from DKMS)."""
    return paths.state_dir / "keys"


def key_pair(config: Config, paths: Paths) -> tuple[Path, Path]:
    """(private key, DER certificate): the configured ones, else the default pair."""
    return (
        config.sign_key or keys_dir(paths) / "mok.key",
        config.sign_cert or keys_dir(paths) / "mok.pub",
    )


def check_key(key: Path) -> None:
    """sign-file cannot ask for a passphrase (it would fail on every module, deep in a
    build): say so before anything is built."""
    if str(key).startswith("pkcs11:"):
        return
    try:
        run.capture(["openssl", "pkey", "-in", key, "-passin", "pass:", "-noout"])
    except run.CommandFailed:
        raise UserError(
            f"sign.key: {key} is protected by a passphrase or is not a private "
            f"key: sign-file cannot use it (give an unprotected key, or "
            f"'openssl pkey -in KEY -out NEWKEY' to remove the passphrase)"
        ) from None


def ensure_key_pair(key: Path, cert: Path) -> bool:
    """Make the pair if neither half exists (``dkms generate_mok``); True if it was made.
    Half a pair is an error, never completed by overwriting."""
    if key.exists() and cert.exists():
        return False
    for what, f, other in (("sign.key", key, cert), ("sign.cert", cert, key)):
        if f.exists():
            raise UserError(
                f"{what}: {f} exists but {other} does not: give both, or "
                f"move {f} away to make a new pair"
            )
    if key.parent == cert.parent and not key.parent.exists():
        _make_key_pair(key, cert)  # the default pair: a whole new dir
        return True
    for d in {key.parent, cert.parent}:
        d.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mok.", suffix=".extmod-tmp", dir=key.parent))
    old_umask = os.umask(0o077)
    try:
        run.capture(
            [
                "openssl",
                "req",
                "-new",
                "-x509",
                "-nodes",
                "-days",
                "36500",
                "-subj",
                "/CN=extmod module signing key",
                "-newkey",
                "rsa:2048",
                "-addext",
                "extendedKeyUsage=codeSigning",
                "-keyout",
                tmp / "key",
                "-outform",
                "DER",
                "-out",
                tmp / "cert",
            ]
        )
        (tmp / "cert").chmod(0o644)
        os.link(tmp / "key", key)  # link(2) never replaces: a racing pair wins whole
        shutil.copyfile(tmp / "cert", cert)
    except run.CommandFailed as e:
        raise EnvError(
            f"openssl could not make a signing key: {e.output.strip().splitlines()[-1:] or e}"
        ) from None
    except OSError as e:
        raise EnvError(f"cannot write the signing key {key}: {e.strerror}") from None
    finally:
        os.umask(old_umask)
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _make_key_pair(key: Path, cert: Path) -> None:
    """The default pair, made whole in a temp dir (0700; the key 0600 from its creation,
    umask 077) and renamed to the keys dir: processes that race on first use each make a
    pair, one rename wins, and no one ever sees half a pair or a replaced key."""
    assert cert.parent == key.parent

    def make(tmp: Path) -> None:
        run.capture(
            [
                "openssl",
                "req",
                "-new",
                "-x509",
                "-nodes",
                "-days",
                "36500",
                "-subj",
                "/CN=extmod module signing key",
                "-newkey",
                "rsa:2048",
                "-addext",
                "extendedKeyUsage=codeSigning",
                "-keyout",
                tmp / key.name,
                "-outform",
                "DER",
                "-out",
                tmp / cert.name,
            ]
        )

    try:
        _publish_keys(key.parent, make)
    except run.CommandFailed as e:
        raise EnvError(
            f"openssl could not make a signing key: {e.output.strip().splitlines()[-1:] or e}"
        ) from None


def adopt_key_pair(key: Path, cert: Path, keys: Path) -> str | None:
    """Copy another tool's pair (DKMS's /var/lib/dkms/mok.key + mok.pub) in as the default
    one, if extmod has none yet; returns a note saying so."""
    if keys.exists():
        return None

    def copy(tmp: Path) -> None:
        shutil.copyfile(key, tmp / "mok.key")
        shutil.copyfile(cert, tmp / "mok.pub")

    _publish_keys(keys, copy)
    return f"signing with DKMS's key pair from now on ({key}, copied to {keys})"


def _publish_keys(keys: Path, fill: Callable[[Path], None]) -> None:
    keys.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{keys.name}.", suffix=".extmod-tmp", dir=keys.parent))
    old_umask = os.umask(0o077)
    try:
        fill(tmp)
        (tmp / "mok.key").chmod(0o600)
        (tmp / "mok.pub").chmod(0o644)
        os.rename(tmp, keys)  # fails if another process's pair is already there
    except OSError as e:
        if not ((keys / "mok.key").exists() and (keys / "mok.pub").exists()):
            raise EnvError(f"cannot make the signing key in {keys}: {e.strerror}") from None
    finally:
        os.umask(old_umask)
        shutil.rmtree(tmp, ignore_errors=True)


def finish_module(
    ko: Path, *, strip: str | None, sign: Signer | None, compress: tuple[str, list[str]] | None
) -> Path:
    """Strip, sign and compress ``ko`` in place, in that order (a signature must come last
    before compression: stripping a signed module breaks it). Returns the final file."""
    try:
        if strip:
            run.capture([strip, "--strip-debug", ko])
        if sign:
            run.capture([sign.sign_file, sign.hash, sign.key, sign.cert, ko])
        if compress:
            suffix, argv = compress
            run.capture([*argv, ko])
            ko.unlink(missing_ok=True)  # gzip and xz remove it already; zstd with --rm
            return ko.with_name(ko.name + suffix)
    except run.CommandFailed as e:
        last = e.output.strip().splitlines()[-1:] or [""]
        raise EnvError(f"{e.argv[0]} failed on {ko.name}: {last[0]}") from None
    return ko


def distro_ids(paths: Paths) -> list[str]:
    """ID then ID_LIKE of ROOT/etc/os-release ("debian", "fedora rhel", ...); [] if none."""
    try:
        text = paths.os_release.read_text()
    except OSError:
        return []
    ids: list[str] = []
    for key in ("ID", "ID_LIKE"):
        m = re.search(rf'^{key}="?([^"\n]*)"?$', text, re.M)
        if m:
            ids += m.group(1).split()
    return ids


def distro_location(paths: Paths) -> str | None:
    ids = distro_ids(paths)
    for names, location in _DISTRO_LOCATIONS:
        if any(i.startswith(n) for i in ids for n in names):
            return location
    return None


def dest_location(config: Config, paths: Paths, written: str) -> str:
    if config.install_location == "auto":
        return distro_location(paths) or written
    return written


def _confined(base: Path, rel: str) -> Path:
    """``base/rel``, refusing anything that leaves ``base`` (by .. or by a symlink)."""
    target = base / rel.lstrip("/")
    real_base = base.resolve()
    real = target.parent.resolve() / target.name
    if real_base != real and real_base not in real.parents:
        raise UserError(f"DEST_MODULE_LOCATION {rel!r} leads outside {base}")
    return target


def _modules_by_name(tree: Path, skip: set[Path]) -> dict[str, list[Path]]:
    """Every module file under /lib/modules/KVER (but build/, source/ and ``skip``), by
    module name (``-`` and ``_`` are the same to the kernel); one walk per install."""
    index: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        if dirpath == str(tree):
            dirnames[:] = [d for d in dirnames if d not in ("build", "source")]
        for fn in filenames:
            stem = next((fn[: -len(s)] for s in _SUFFIXES if fn.endswith(s)), None)
            p = Path(dirpath) / fn
            if stem is not None and p not in skip:
                index.setdefault(stem.replace("-", "_"), []).append(p)
    return index


def _missing_dirs(kdir: Path, dest_dir: Path) -> list[str]:
    """The dirs an install creates under KVER, outermost first."""
    missing = []
    d = dest_dir
    while not d.exists() and d != kdir:
        missing.append(str(d.relative_to(kdir)))
        d = d.parent
    return list(reversed(missing))


def _plan_file(
    kdir: Path,
    m: BuiltModule,
    dest: Path,
    by_name: dict[str, list[Path]],
    saved_dir: Path,
    moves: list[tuple[Path, Path]],
) -> InstalledFile:
    """One module's place: an in-tree module of the same name in the very dir it goes to
    (any compression) is kept aside (``moves``) to put back on uninstall; the same name
    elsewhere in the kernel's tree is a shadow, recorded."""
    original: str | None = None
    shadows = []
    for other in sorted(by_name.get(m.dest_name.replace("-", "_"), [])):
        if other.parent == dest.parent:
            moves.append((other, saved_dir / other.relative_to(kdir)))
            original = str(other.relative_to(kdir))
        else:
            shadows.append(str(other.relative_to(kdir)))
    return InstalledFile(
        path=str(dest.relative_to(kdir)),
        sha256=m.sha256,
        original=original,
        shadows=tuple(shadows),
    )


def install(
    state: State, paths: Paths, config: Config, built: Built, withheld: tuple[str, ...] = ()
) -> Installed:
    """Copy a build's modules into /lib/modules/KVER as one journaled transaction: the
    plan is written first, then originals are moved away and each .ko is put in place
    (temp + rename), then the record; a crash anywhere is rolled back by ``recover``.
    The caller holds the kernel lock and runs depmod. ``withheld``: load-check problems
    ("x.ko: ..."); the modules they name are left out and the record says why."""
    kdir = paths.modules_dir / built.kver
    if not kdir.is_dir():
        raise UserError(
            f"{kdir} does not exist: cannot install into a kernel that is not installed"
        )
    owned = {
        kdir / f.path: rec.name
        for rec in state.all_installed(built.kver)
        for f in rec.files
        if rec.name != built.name
    }
    targets = []
    for m in built.modules:
        if any(w.startswith(f"{m.built_name}.ko: ") for w in withheld):
            continue
        dest_dir = _confined(kdir, dest_location(config, paths, m.dest_location))
        if dest_dir / m.file in owned:
            raise UserError(
                f"{built.name}: {dest_dir / m.file} is installed by package "
                f"{owned[dest_dir / m.file]}"
            )
        targets.append((m, dest_dir))
    by_name = _modules_by_name(kdir, set(owned))
    files: list[InstalledFile] = []
    created: list[str] = []
    moves: list[tuple[Path, Path]] = []  # in-tree module -> where it is kept
    saved_dir = state.originals_dir(built.kver, built.arch, built.name)
    for m, dest_dir in targets:
        created += _missing_dirs(kdir, dest_dir)
        files.append(_plan_file(kdir, m, dest_dir / m.file, by_name, saved_dir, moves))
    rec = Installed(
        built.name,
        built.version,
        built.kver,
        built.arch,
        tuple(files),
        tuple(dict.fromkeys(created)),
        withheld,
    )
    journal = state.journal_file(built.kver, built.arch, built.name)
    try:
        atomic.write_json(
            journal,
            {
                "op": "install",
                "record": state.record_data(rec),
                "moves": [
                    [str(a.relative_to(kdir)), str(b.relative_to(saved_dir))] for a, b in moves
                ],
            },
        )
        atomic.write_text(state.depmod_marker(built.kver), "")
    except OSError as e:
        raise EnvError(f"cannot write the journal {journal}: {e.strerror}") from None
    faults.point("install:journaled")
    try:
        for other, saved in moves:
            if not saved.exists():
                atomic.move_file(other, saved)
            else:
                other.unlink()
            faults.point("install:original")
        for m, dest_dir in targets:
            atomic.copy_file(built.dir / "module" / m.file, dest_dir / m.file, mode=0o644)
            faults.point("install:file")
        state.write_installed(rec)
    except OSError as e:
        _roll_back_install(
            state,
            paths,
            rec,
            [(str(a.relative_to(kdir)), str(b.relative_to(saved_dir))) for a, b in moves],
        )
        state.clear_journal(journal)
        raise EnvError(
            f"cannot install {built.name} into {kdir}: {e.strerror} (rolled back: nothing changed)"
        ) from None
    faults.point("install:recorded")
    state.clear_journal(journal)
    return rec


def uninstall(state: State, paths: Paths, rec: Installed) -> list[str]:
    """Remove an install's files (only if unchanged), put originals back, drop the record:
    journaled, and finished by ``recover`` after a crash. Returns notes for files that
    were left because someone changed them."""
    journal = state.journal_file(rec.kver, rec.arch, rec.name)
    try:
        atomic.write_json(journal, {"op": "uninstall", "record": state.record_data(rec)})
        atomic.write_text(state.depmod_marker(rec.kver), "")
    except OSError as e:
        raise EnvError(f"cannot write the journal {journal}: {e.strerror}") from None
    faults.point("uninstall:journaled")
    notes = _finish_uninstall(state, paths, rec)
    state.clear_journal(journal)
    return notes


def _finish_uninstall(state: State, paths: Paths, rec: Installed) -> list[str]:
    """Every step may already have been done (a re-run after a crash)."""
    kdir = paths.modules_dir / rec.kver
    notes = []
    originals = state.originals_dir(rec.kver, rec.arch, rec.name)
    for f in rec.files:
        path = kdir / f.path
        if path.exists():
            if digest.file(path) == f.sha256:
                path.unlink()
                faults.point("uninstall:file")
            else:
                notes.append(f"{path} was changed since it was installed: left in place")
        if f.original:
            saved = originals / f.original
            if saved.exists() and not (kdir / f.original).exists():
                atomic.move_file(saved, kdir / f.original)
    _remove_empty(kdir, rec.created_dirs)
    if originals.exists():
        shutil.rmtree(originals)
        for parent in (originals.parent, originals.parent.parent):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
    state.drop_installed(rec.kver, rec.arch, rec.name)
    faults.point("uninstall:recorded")
    return notes


def _roll_back_install(
    state: State, paths: Paths, rec: Installed, moves: list[tuple[str, str]]
) -> None:
    """Undo a part-done install: its files (and temp files) out, originals back."""
    kdir = paths.modules_dir / rec.kver
    saved_dir = state.originals_dir(rec.kver, rec.arch, rec.name)
    for f in rec.files:
        path = kdir / f.path
        for tmp in path.parent.glob(f".{path.name}.*.extmod-tmp"):
            tmp.unlink(missing_ok=True)
        if path.exists() and digest.file(path) == f.sha256:
            path.unlink()
    for orig, saved in moves:
        if (saved_dir / saved).exists() and not (kdir / orig).exists():
            atomic.move_file(saved_dir / saved, kdir / orig)
    _remove_empty(kdir, rec.created_dirs)
    current = state.find_installed(rec.kver, rec.arch, rec.name)
    if current is not None and current.files == rec.files:
        state.drop_installed(rec.kver, rec.arch, rec.name)


def _remove_empty(kdir: Path, created: tuple[str, ...]) -> None:
    for rel in reversed(created):
        d = kdir / rel
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def recover(state: State, paths: Paths, kver: str) -> list[str]:
    """Finish what a crash interrupted on one kernel (the caller holds its lock): an
    install is rolled back, an uninstall completed. Returns what was done."""
    done = []
    for _, journal in state.journals(kver):
        try:
            data = json.loads(journal.read_text())
            rec = state.record_from(data["record"])
        except (OSError, ValueError, KeyError, TypeError):
            # Written by temp + rename, so never half a journal; a hand-edited one is
            # reported, not guessed at.
            raise UserError(f"{journal}: unreadable journal: fix or remove it") from None
        if data.get("op") == "install":
            _roll_back_install(state, paths, rec, [(a, b) for a, b in data.get("moves", [])])
            done.append(
                f"rolled back the interrupted install of {rec.name}/{rec.version} on {kver}"
            )
        else:
            _finish_uninstall(state, paths, rec)
            done.append(f"finished the interrupted uninstall of {rec.name}/{rec.version} on {kver}")
        state.clear_journal(journal)
    return done


def depmod(paths: Paths, kver: str) -> None:
    """``depmod -a`` for one kernel under the root (-b ROOT), with its System.map if any."""
    argv: list[str | Path] = ["depmod", "-a"]
    with contextlib.ExitStack() as stack:
        base = paths.root
        if paths.install_tree is not None and paths.install_tree != base / "lib/modules":
            # depmod -b BASE works on BASE/lib/modules: a --installtree of another name is
            # reached through a link in a scratch dir
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="extmod-")))
            (base / "lib").mkdir()
            (base / "lib/modules").symlink_to(paths.install_tree.absolute())
        if base != Path("/"):
            argv += ["-b", base]
        system_map = paths.root / "boot" / f"System.map-{kver}"
        if system_map.exists():
            argv += ["-F", system_map]
        argv.append(kver)
        argv[0] = run.system_tool("depmod", "kmod")
        try:
            run.capture(argv)
        except run.CommandFailed as e:
            last = e.output.strip().splitlines()[-1:] or [""]
            raise EnvError(f"depmod failed for {kver}: {last[0]}") from None
        except subprocess.TimeoutExpired:
            raise EnvError(f"depmod for {kver} took over 60 s") from None
