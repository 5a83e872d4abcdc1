"""The shared build store's own rules (issue 23, fast): an object fetched from another
machine is taken only when it is signed by a trusted key, for the digest it is filed
under, over exactly its bytes; an archive holding anything but the object's files is
refused; an engine that is not there fails fast with a RemoteError; a bad store.url is
named by setting. The real engines (Redis, nginx's WebDAV) and real builds are in
test_real_shared_store.py."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import free_port, openssl_pair
from extmod.core import config, paths
from extmod.core.errors import UserError
from extmod.store import builds, remote, shared
from test_store import DIGEST, _store


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return openssl_pair(tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return openssl_pair(tmp_path_factory.mktemp("stranger"), "stranger")


def _settings(pair: tuple[Path, Path], trust: tuple[Path, ...] = ()) -> shared.Settings:
    key, cert = pair
    return shared.Settings("redis://127.0.0.1:1", "read-write", 2, trust or (cert,), key, cert)


def _object(tmp_path: Path, pair: tuple[Path, Path]) -> tuple[paths.Paths, bytes]:
    p, _ = _store(tmp_path / "host")
    return p, shared.pack(p, _settings(pair), DIGEST)


def _split(data: bytes) -> tuple[dict[str, str], bytes]:
    end = data.index(b"\n", len(shared.MAGIC))
    return json.loads(data[len(shared.MAGIC) : end]), data[end + 1 :]


def _join(header: dict[str, str], body: bytes) -> bytes:
    return shared.MAGIC + json.dumps(header).encode() + b"\n" + body


def test_a_signed_object_is_taken_and_filed(tmp_path: Path, fleet: tuple[Path, Path]) -> None:
    p, data = _object(tmp_path, fleet)
    other = paths.for_invocation(tmp_path / "other", {}, 0)
    body = shared.check(data, DIGEST, (fleet[1],))
    shared._file(other, DIGEST, body)
    got = builds.get(other, DIGEST)
    assert got is not None and got.meta.exports == ("sym",)
    assert (
        got.modules[0].path.read_bytes()
        == (builds.object_dir(p, DIGEST) / "modules/a.ko").read_bytes()
    )


def _poisons(data: bytes, stranger: tuple[Path, Path], tmp: Path) -> dict[str, tuple[bytes, str]]:
    header, body = _split(data)
    flipped = body[:-9] + bytes([body[-9] ^ 1]) + body[-8:]
    resigned = _resigned(header, flipped, stranger, tmp)
    return {
        "one body byte": (_join(header, flipped), "not the ones signed"),
        "its sha256 made to match": (
            _join({**header, "sha256": hashlib.sha256(flipped).hexdigest()}, flipped),
            "does not verify",
        ),
        "signed by another key": (resigned, "does not verify"),
        "filed under another digest": (
            _join({**header, "inputs": "cd" * 32}, body),
            "made for",
        ),
        "no signature": (_join({**header, "signature": ""}, body), "does not verify"),
        "truncated": (data[:-20], "not the ones signed"),
        "a damaged header": (shared.MAGIC + b"{not json\n" + body, "damaged header"),
        "not an object": (b"\x1f\x8b" + body, "not an extmod store object"),
    }


def _resigned(header: dict[str, str], body: bytes, pair: tuple[Path, Path], tmp: Path) -> bytes:
    sha = hashlib.sha256(body).hexdigest()
    (tmp / "statement").write_text(f"extmod-store 1 {DIGEST} {sha}\n")
    subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", pair[0], "-out", tmp / "sig", tmp / "statement"],
        check=True,
    )
    sig = base64.b64encode((tmp / "sig").read_bytes()).decode()
    return _join({**header, "sha256": sha, "signature": sig}, body)


def test_each_poisoned_object_is_refused(
    tmp_path: Path, fleet: tuple[Path, Path], stranger: tuple[Path, Path]
) -> None:
    _, data = _object(tmp_path, fleet)
    for case, (poisoned, reason) in _poisons(data, stranger, tmp_path).items():
        with pytest.raises(shared.Refused, match=reason):
            shared.check(poisoned, DIGEST, (fleet[1],))
        print(case, "refused")
    # the stranger's object is taken only by a host that trusts the stranger
    resigned = _poisons(data, stranger, tmp_path)["signed by another key"][0]
    assert shared.check(resigned, DIGEST, (fleet[1], stranger[1]))
    with pytest.raises(shared.Refused, match="no certificate"):
        shared.check(data, DIGEST, ())


@pytest.mark.parametrize(
    "member",
    ["../escape.ko", "modules/../../x.ko", "modules/a.sh", "modules/sub/a.ko", "link"],
)
def test_an_archive_with_other_entries_is_refused(tmp_path: Path, member: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        else:
            info.size = 4
        tar.addfile(info, io.BytesIO(b"\x7fELF") if member != "link" else None)
    p = paths.for_invocation(tmp_path / "root", {}, 0)
    with pytest.raises(shared.Refused, match="unexpected entry"):
        shared._file(p, DIGEST, buf.getvalue())
    assert not builds.object_dir(p, DIGEST).exists()
    assert not list((tmp_path / "root").rglob("*.ko"))


@pytest.mark.parametrize("url", ["redis://127.0.0.1:{port}", "http://127.0.0.1:{port}/s"])
def test_an_engine_that_is_not_there_fails_fast(url: str) -> None:
    engine = remote.engine(url.format(port=free_port()), 2)
    start = time.monotonic()
    with pytest.raises(remote.RemoteError):
        engine.get("k")
    assert time.monotonic() - start < 2


@pytest.mark.parametrize(
    "url,problem",
    [
        ("ftp://host/x", "expected a URL starting with"),
        ("redis://", "no host"),
        ("redis://h:99999", "out of range"),
        ("redis+unix://", "names the socket"),
    ],
)
def test_a_bad_store_url_is_named(url: str, problem: str) -> None:
    with pytest.raises(UserError, match=f"EXTMOD_STORE_URL.*{problem}"):
        config.load(None, flags={}, environ={"EXTMOD_STORE_URL": url})


def test_the_password_is_not_shown(tmp_path: Path) -> None:
    assert remote._shown("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
