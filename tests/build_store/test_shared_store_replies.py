"""A shared store that answers badly costs speed, never a build (issue 32, fast): servers on
127.0.0.1 that answer each protocol wrongly (lengths that are not numbers, negative or
huge, replies of the wrong type, cut short, silent, dripping a byte at a time). Each ends
in a ``RemoteError``, never another exception, within ``store.timeout`` + 1 s; through the
command's stores (``reuse.Stores``, what the verbs use) it is one note and a miss, and the
store is not asked again in that command. Hypothesis feeds both readers arbitrary bytes.
The same with real builds: test_real_shared_store.py."""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import openssl_pair
from extmod.builder import reuse
from extmod.core import paths
from extmod.store import builds, remote, shared
from test_store import DIGEST, META, _store

TIMEOUT = 0.5


@dataclass
class BadServer:
    """A TCP server on 127.0.0.1 that answers every connection with ``reply``: all at once,
    a byte every ``drip`` seconds, or never (``reply`` None: it reads and keeps quiet).
    ``read=False``: it never reads what it is sent. Stopped by ``close``."""

    reply: bytes | None
    drip: float = 0.0
    read: bool = True
    connections: int = 0
    sock: socket.socket = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.threads.append(threading.Thread(target=self._accept, daemon=True))
        self.threads[0].start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.1)
            if self.read:
                try:
                    conn.recv(1 << 16)
                except OSError:
                    pass
            try:
                if self.reply is None or not self.read:
                    self.stop.wait(30)
                elif self.drip:
                    for i in range(len(self.reply)):
                        if self.stop.wait(self.drip):
                            return
                        conn.sendall(self.reply[i : i + 1])
                else:
                    conn.sendall(self.reply)
                    self.stop.wait(30)  # then keeps the connection open, saying nothing
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for t in self.threads:
            t.join(5)


@contextmanager
def serving(reply: bytes | None, drip: float = 0.0, read: bool = True) -> Iterator[BadServer]:
    server = BadServer(reply, drip, read)
    try:
        yield server
    finally:
        server.close()


OBJECT = b"extmod-store 1\n" + b"x" * 40
RESP = {
    "integer not a number": b":abc\r\n",
    "bulk length not a number": b"$12x\r\n" + b"a" * 12 + b"\r\n",
    "bulk length negative": b"$-5\r\n",
    "bulk length huge": b"$99999999999999\r\n",
    "bulk length 20 digits": b"$" + b"9" * 20 + b"\r\n",
    "bulk longer than its length": b"$2\r\nabcdef\r\n",
    "an integer for GET": b":1\r\n",
    "an array": b"*1\r\n$1\r\na\r\n",
    "a RESP3 type": b"_\r\n",
    "an error": b"-ERR no such thing\r\n",
    "cut short": b"$100\r\nabc",
    "no line end": b"+OK",
    "garbage": b"\x00\xff\x13 hello\r\n",
    "empty, then closed": b"",
    "silent": None,
    "slow drip": b"$40\r\n" + b"x" * 40 + b"\r\n",
}
HTTP = {
    "Content-Length not a number": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n" + OBJECT,
    "Content-Length negative": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n" + OBJECT,
    "Content-Length huge": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n" + OBJECT,
    "Content-Length 40 digits": b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n",
    "body cut short": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\nab",
    "chunk size not hex": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n",
    "status not a number": b"HTTP/1.1 OK fine\r\n\r\n",
    "not HTTP": b"SSH-2.0-OpenSSH_9.2\r\n",
    "a header line too long": b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
    "a server error": b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
    "empty, then closed": b"",
    "silent": None,
    "slow drip headers": b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + b"x" * 40,
}


# bad only as the answer to a GET: EXISTS may answer an integer, and HEAD has no body
ONLY_GET = {"an integer for GET", "body cut short", "chunk size not hex"} | {
    c for c in HTTP if c.startswith("Content-Length")
}


def _url(kind: str, port: int) -> str:
    return f"redis://127.0.0.1:{port}" if kind == "redis" else f"http://127.0.0.1:{port}/s"


CASES = [("redis", k, v) for k, v in RESP.items()] + [("http", k, v) for k, v in HTTP.items()]


@pytest.mark.parametrize("kind,case,reply", CASES, ids=[f"{k}: {c}" for k, c, _ in CASES])
def test_each_bad_reply_is_a_remote_error_within_the_deadline(
    kind: str, case: str, reply: bytes | None
) -> None:
    drip = 0.3 if "drip" in case else 0.0  # 40 bytes and more: 12 s, whole
    with serving(reply, drip) as server:
        engine = remote.engine(_url(kind, server.port), TIMEOUT)
        ops = (engine.get,) if case in ONLY_GET else (engine.get, engine.has)
        for op in ops:
            start = time.monotonic()
            with pytest.raises(remote.RemoteError) as e:
                op("k")
            assert "\n" not in str(e.value)
            assert time.monotonic() - start < TIMEOUT + 1, case


def test_a_store_that_never_reads_an_upload_is_given_up_on_in_time(tmp_path: Path) -> None:
    """A server that takes the connection and reads nothing: the upload's sendall blocks
    once the socket buffers fill; the deadline ends it. (Given 5 s past the deadline: the
    Debian 13 lane runs this at nice 19 beside the whole suite, where copying 32 MiB into
    the socket buffers can wait seconds for the CPU; without a deadline it never ends.)"""
    body = b"x" * (32 << 20)
    for kind in ("redis", "http"):
        with serving(b"", read=False) as server:
            engine = remote.engine(_url(kind, server.port), TIMEOUT)
            start = time.monotonic()
            with pytest.raises(remote.RemoteError, match=r"store\.timeout"):
                engine.put("k", body)
            assert time.monotonic() - start < TIMEOUT + 5, kind


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return openssl_pair(tmp_path_factory.mktemp("fleet"))


def _stores(root: Path, url: str, pair: tuple[Path, Path]) -> reuse.Stores:
    p = paths.for_invocation(root, {}, 0)
    key, cert = pair
    st = shared.Settings(url, "read-write", TIMEOUT, (cert,), key, cert)
    return reuse.Stores(p, True, shared.Link(st))


@pytest.mark.parametrize("kind", ["redis", "http"])
def test_through_the_commands_stores_one_note_and_a_miss_then_not_asked_again(
    kind: str, tmp_path: Path, fleet: tuple[Path, Path]
) -> None:
    bad = RESP["bulk length not a number"] if kind == "redis" else HTTP["Content-Length huge"]
    p_built, ko = _store(tmp_path / "built")  # a build this host made, to upload
    with serving(bad) as server:
        stores = _stores(tmp_path / "host", _url(kind, server.port), fleet)
        notes: list[str] = []
        assert stores.lookup("cd" * 32, notes.append) is None
        assert len(notes) == 1 and "cannot be used" in notes[0] and "building here" in notes[0]
        asked = server.connections
        # the build is made here; its filing does not try the store again, nor say more
        record_notes = stores.file(DIGEST, META, {"a": ko})
        assert record_notes == [] and server.connections == asked
        assert stores.lookup("ef" * 32, notes.append) is None and len(notes) == 1
        assert server.connections == asked
    assert builds.get(stores.paths, DIGEST) is not None  # filed locally all the same
    assert p_built  # (the first root's object is the one made there)


# -- Hypothesis: the readers, fed arbitrary bytes -----------------------------------------------
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=300)
    | st.builds(
        lambda a, b: a + b,
        st.sampled_from([b":", b"$", b"+", b"-", b"*", b"$-1\r\n", b"$3\r\n", b":12"]),
        st.binary(max_size=60),
    )
)
def test_the_resp_reader_gives_a_reply_or_a_remote_error(data: bytes) -> None:
    try:  # what Redis._call turns into a RemoteError; any other exception fails here
        got = remote._reply(io.BytesIO(data))
    except (remote.RemoteError, *remote._FAILURES):
        return
    assert got is None or isinstance(got, bytes | int)


class _Canned:
    """What http.client reads a response from: ``makefile`` over fixed bytes."""

    def __init__(self, data: bytes):
        self.data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))


HEAD = st.sampled_from(
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.0 404 Not Found\r\n",
        b"",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HEAD, st.binary(max_size=300))
def test_the_http_reader_gives_a_reply_or_a_remote_error(head: bytes, data: bytes) -> None:
    res = http.client.HTTPResponse(_Canned(head + data), method="GET")  # type: ignore[arg-type]
    try:  # what Http._request turns into a RemoteError; any other exception fails here
        res.begin()
        status, body = remote.response(res, "GET", "k")
    except (remote.RemoteError, *remote._FAILURES):
        return
    assert isinstance(status, int) and isinstance(body, bytes)
