"""The shared build store (issue 23): the local store's objects on an engine hosts share
(``store/remote.py``), so a host fetches a build another host made instead of making it.

**What is trusted.** An object in a shared store was written by some other machine, so its
name (the inputs digest) proves nothing. Every object carries a detached signature, made by
the uploading host with its module signing key (``sign.key``; default the MOK extmod made or
adopted), over one line that names the format, the inputs digest the object is filed under
and the sha256 of its bytes. A host takes a fetched object only when that signature
verifies against one of the certificates it trusts: ``store.trust`` (certificate files, DER
or PEM), by default its own signing certificate. A fleet whose hosts share one MOK (as they
must to load the same signed modules under Secure Boot) trusts itself with no setting. An
object that is unsigned, signed by another key, filed under another digest, truncated or
changed by one byte is refused with a one-line warning, and the host builds locally.
The fetched modules are then filed in the local store and finished (stripped, signed with
this host's key, compressed) as a local build's are.

**What is written.** A host that built uploads the build when ``store.mode`` lets it
(``read-write``, the default, or ``write-only`` for build hosts); a ``read-only`` host never
writes. An object is ``extmod-store 1\\n``, a JSON header line (inputs, sha256, signature,
the signer's certificate digest), then a gzip'd tar of the local object dir.

**Bound.** The engine bounds the shared store: Redis's ``maxmemory`` with
``allkeys-lru``; for WebDAV, the server's own cleanup (a cron ``find -atime``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from extmod.core import digest, files, run
from extmod.core.errors import UserError
from extmod.core.paths import Paths
from extmod.store import builds, remote, schema

MAGIC = b"extmod-store 1\n"
PREFIX = "extmod-store-1-"  # the key of the object filed under a digest
HEADER_MAX = 1 << 16


class Refused(Exception):
    """A fetched object that is not taken: the reason, in one line."""


@dataclass(frozen=True)
class Settings:
    url: str
    mode: str  # read-write, read-only, write-only
    timeout: float
    trust: tuple[Path, ...]  # certificates a fetched object's signature must verify with
    key: Path  # this host's signing key and certificate, for what it uploads
    cert: Path

    @property
    def fetches(self) -> bool:
        return self.mode != "write-only"

    @property
    def uploads(self) -> bool:
        return self.mode != "read-only"


def key_of(inputs: str) -> str:
    return PREFIX + inputs


class Unusable(Exception):
    """The shared store failed for the first time in this command: said once, by the
    caller; it is not asked again in the command (``Link``)."""


@dataclass
class Link:
    """One command's use of the shared store (issue 32). The first fetch or upload that
    fails raises ``Unusable``; from then on, in this command, the store is not asked again
    and every fetch misses, every upload is left out, without a word more. Shared by the
    command's build threads."""

    settings: Settings
    down: str | None = None  # why, once it failed
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fetch(self, paths: Paths, inputs: str) -> bool:
        """``fetch``, unless the store failed before in this command (then False)."""
        return self.settings.fetches and self._use(lambda: fetch(paths, self.settings, inputs))

    def upload(self, paths: Paths, inputs: str) -> bool:
        """``upload``, unless the store failed before in this command (then False)."""
        return self.settings.uploads and self._use(lambda: upload(paths, self.settings, inputs))

    def _use(self, operation: Callable[[], bool]) -> bool:
        if self.down is not None:
            return False
        try:
            return operation()
        except remote.RemoteError as e:
            self._failed(e)
            return False

    def _failed(self, e: remote.RemoteError) -> None:
        with self._lock:
            first, self.down = self.down is None, str(e)
        if first:
            raise Unusable(str(e)) from None


# -- upload ------------------------------------------------------------------------------
def upload(paths: Paths, st: Settings, inputs: str) -> bool:
    """The local object filed under ``inputs``, signed and put on the shared store unless
    it is there already; False when it was there. Raises RemoteError, or
    run.CommandFailed/OSError when it cannot be signed."""
    engine = remote.engine(st.url, st.timeout)
    if engine.has(key_of(inputs)):
        return False
    engine.put(key_of(inputs), pack(paths, st, inputs))
    return True


def pack(paths: Paths, st: Settings, inputs: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(builds.object_dir(paths, inputs), arcname=".", filter=_plain)
    body = buf.getvalue()
    sha = hashlib.sha256(body).hexdigest()
    with tempfile.TemporaryDirectory(prefix="extmod-sign-") as tmp:
        statement, sig = Path(tmp) / "statement", Path(tmp) / "sig"
        statement.write_text(_statement(inputs, sha))
        run.capture(["openssl", "dgst", "-sha256", "-sign", st.key, "-out", sig, statement])
        signature = base64.b64encode(sig.read_bytes()).decode()
    header = {
        "inputs": inputs,
        "sha256": sha,
        "signature": signature,
        "signer": digest.file(st.cert) if st.cert.is_file() else "",
    }
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _statement(inputs: str, sha: str) -> str:
    return f"extmod-store 1 {inputs} {sha}\n"


# -- fetch -------------------------------------------------------------------------------
def fetch(paths: Paths, st: Settings, inputs: str) -> bool:
    """The object filed under ``inputs`` fetched, checked (``check``) and filed in the
    local store; False when the shared store has none. Raises RemoteError or Refused."""
    data = remote.engine(st.url, st.timeout).get(key_of(inputs))
    if data is None:
        return False
    body = check(data, inputs, st.trust)
    _file(paths, inputs, body)
    return True


def check(data: bytes, inputs: str, trust: tuple[Path, ...]) -> bytes:
    """The object's body when its header names ``inputs``, its sha256 matches, and its
    signature verifies with one of ``trust``; else Refused."""
    if not data.startswith(MAGIC):
        raise Refused("not an extmod store object")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + HEADER_MAX)
    if end < 0:
        raise Refused("no header")
    try:
        header = schema.parse(data[len(MAGIC) : end], "header")
        if not isinstance(header, dict):
            raise Refused("a damaged header")
        named, sha = str(header["inputs"]), str(header["sha256"])
        signature = base64.b64decode(str(header["signature"]), validate=True)
    except (UserError, ValueError, KeyError):
        raise Refused("a damaged header") from None
    body = data[end + 1 :]
    if named != inputs:
        raise Refused(f"filed under {inputs[:16]} but made for {named[:16]}")
    if hashlib.sha256(body).hexdigest() != sha:
        raise Refused("its bytes are not the ones signed")
    if not trust:
        raise Refused("no certificate to check it with (store.trust, sign.cert)")
    if not any(_verifies(cert, _statement(inputs, sha), signature) for cert in trust):
        raise Refused(f"its signature does not verify with {', '.join(map(str, trust))}")
    return body


def _verifies(cert: Path, statement: str, signature: bytes) -> bool:
    if not cert.is_file():
        return False
    with tempfile.TemporaryDirectory(prefix="extmod-verify-") as tmp:
        pub, sig, text = Path(tmp) / "pub", Path(tmp) / "sig", Path(tmp) / "statement"
        try:
            pub.write_text(run.capture(["openssl", "x509", "-in", cert, "-pubkey", "-noout"]))
        except run.CommandFailed:
            return False
        sig.write_bytes(signature)
        text.write_text(statement)
        try:
            run.capture(["openssl", "dgst", "-sha256", "-verify", pub, "-signature", sig, text])
        except run.CommandFailed:
            return False
    return True


def _file(paths: Paths, inputs: str, body: bytes) -> None:
    """The checked body unpacked beside the local object's place and renamed there; only
    ``object.json`` and ``modules/*.ko`` regular files are taken."""
    final = builds.object_dir(paths, inputs)
    if final.is_dir():
        return
    try:
        with (
            builds.filing(final) as tmp,
            tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar,
        ):
            for m in tar.getmembers():
                name = os.path.normpath(m.name)
                ok = name in (".", "modules", "object.json") or (
                    name.startswith("modules/") and name.endswith(".ko") and name.count("/") == 1
                )
                if not ok or not (m.isfile() or m.isdir()):
                    raise Refused(f"an unexpected entry {m.name!r}")
            files.unpack(tar, tmp)
    except (OSError, tarfile.TarError, EOFError) as e:
        raise Refused(f"its archive cannot be read: {e}") from None
