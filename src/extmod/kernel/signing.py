"""Module signing keys: the signer a CONFIG_MODULE_SIG kernel needs, the default key pair
(made with openssl on first use, never overwritten, adopted from DKMS by import-dkms), and
the check that sign-file can use a key."""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from extmod.core import run
from extmod.core.config import Config
from extmod.core.errors import EnvError, UserError
from extmod.core.paths import Paths
from extmod.kernel.kernel import Kernel


@dataclass(frozen=True)
class Signer:
    sign_file: Path
    key: Path
    cert: Path
    hash: str


def signer(kernel: Kernel, config: Config, paths: Paths) -> tuple[Signer | None, str | None]:
    """The signer for a CONFIG_MODULE_SIG kernel (None otherwise) and a note if signing is
    wanted but impossible. A key pair is made with openssl on first use: the key is 0600
    from its creation and an existing key or certificate is never overwritten."""
    if kernel.config.get("CONFIG_MODULE_SIG") != "y":
        return None, None
    if config.sign_modules == "no":
        return None, "sign.modules = no: modules are not signed"
    if config.sign_modules == "not-in-chroot" and in_chroot():
        return None, "running in a chroot (sign.modules = not-in-chroot): modules are not signed"
    sign_file = kernel.build_dir / "scripts/sign-file"
    if config.sign_file:
        sign_file = for_kernel(config.sign_file, kernel.release)
    if not os.access(sign_file, os.X_OK):
        return None, f"{sign_file} not found: modules are not signed"
    # $kernelver in the pair's paths too, as DKMS reads framework.conf's mok_* settings
    key, cert = (for_kernel(str(f), kernel.release) for f in key_pair(config, paths))
    if not key.exists() and not cert.exists():
        if not (config.sign_key or config.sign_cert):
            _make_key_pair(key, cert)
        else:  # DKMS's prepare_mok makes a pair where framework.conf names one; so does
            # extmod, in dirs that exist (it makes no dir that a setting names)
            for what, f in (("sign.key", key), ("sign.cert", cert)):
                if not f.parent.is_dir():
                    raise UserError(f"{what}: {f} does not exist, nor does its dir")
            ensure_key_pair(key, cert)
    for what, f in (("sign.key", key), ("sign.cert", cert)):
        if not f.exists():
            raise UserError(f"{what}: {f} does not exist (the other half of the pair does)")
    check_key(key)
    hash_name = kernel.config.get("CONFIG_MODULE_SIG_HASH") or "sha512"
    return Signer(sign_file, key, cert, hash_name), None


def in_chroot() -> bool:
    """Whether this process's root is not init's (DKMS 3.4 running_in_chroot: the same
    inode test as root, else whether init sees other mounts than we do)."""
    try:
        ours, init = os.stat("/"), os.stat("/proc/1/root")
        return (ours.st_dev, ours.st_ino) != (init.st_dev, init.st_ino)
    except OSError:
        pass
    try:
        with open("/proc/1/mountinfo") as a, open("/proc/self/mountinfo") as b:
            return a.read() != b.read()
    except OSError:
        return False


def keys_dir(paths: Paths) -> Path:
    """Where the default pair lives (made on first use, or adopted from DKMS)."""
    return paths.keys_dir


def for_kernel(path: str, release: str) -> Path:
    """A configured path with DKMS's ``$kernelver`` in it, for kernel ``release``."""
    return Path(path.replace("${kernelver}", release).replace("$kernelver", release))


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
        _openssl_req(tmp / "key", tmp / "cert")
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


def _openssl_req(key: Path, cert: Path) -> None:
    """A new MOK: RSA 2048, no passphrase, 100 years, with the codeSigning EKU (as DKMS
    3.x's generate_mok makes it), the certificate in DER."""
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
            key,
            "-outform",
            "DER",
            "-out",
            cert,
        ]
    )


def _make_key_pair(key: Path, cert: Path) -> None:
    """The default pair, made whole in a temp dir (0700; the key 0600 from its creation,
    umask 077) and renamed to the keys dir: processes that race on first use each make a
    pair, one rename wins, and no one ever sees half a pair or a replaced key."""
    assert cert.parent == key.parent

    def make(tmp: Path) -> None:
        _openssl_req(tmp / key.name, tmp / cert.name)

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


def kernel_trusts(kernel: Kernel, cert: Path) -> bool:
    """Whether the kernel's built-in keys include ``cert`` (DER): the tree's own
    certs/signing_key.x509 (a kernel built here) or a PEM file CONFIG_SYSTEM_TRUSTED_KEYS
    names. A distribution's headers carry neither: its kernel trusts only its own keys."""
    try:
        wanted = cert.read_bytes()
    except OSError:
        return False
    if wanted.startswith(b"-----BEGIN"):
        wanted = _pem_blocks(wanted)[0] if _pem_blocks(wanted) else b""
    found: list[bytes] = []
    own = kernel.build_dir / "certs/signing_key.x509"
    if own.is_file():
        found.append(own.read_bytes())
    for name in kernel.config.get("CONFIG_SYSTEM_TRUSTED_KEYS", "").split():
        f = Path(name) if name.startswith("/") else kernel.build_dir / name
        try:
            found += _pem_blocks(f.read_bytes())
        except OSError:
            continue
    return bool(wanted) and wanted in found


def _pem_blocks(data: bytes) -> list[bytes]:
    """The DER bytes of each certificate in a PEM file."""
    return [
        base64.b64decode(b"".join(m.group(1).split()))
        for m in re.finditer(
            rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", data, re.S
        )
    ]
