"""The engines a shared build store lives on (issue 23): the ones fleets already run for
ccache's remote storage, one object per key.

- ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` and ``redis+unix://[[USER]:PASSWORD@]/PATH
  [?db=DB]``: GET, SET and EXISTS over RESP (the Redis protocol), a connection per command
  line. Bound the store with the server's own ``maxmemory`` and ``maxmemory-policy
  allkeys-lru``.
- ``http://`` and ``https://HOST[:PORT]/PATH``: GET, PUT and HEAD of ``PATH/KEY``, as nginx
  serves them with its WebDAV module (``dav_methods PUT;``) or any HTTP cache that speaks
  them; basic authentication from the URL's user and password.

``store.timeout`` is a deadline for each whole operation (connect, send, every byte of the
reply), not for each socket read: a server that drips one byte a second is given up on when
the deadline passes (issue 32). Whatever a server answers, the readers return a typed reply
or raise ``RemoteError``: a length that is not a number, negative or beyond ``MAX_OBJECT``, a
reply of the wrong type, a reply cut short. Callers turn it into a one-line note and a local
build: a store that is down, slow or mad costs a fleet its speed, never a build.
"""

from __future__ import annotations

import base64
import http.client
import io
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import BinaryIO, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

MAX_OBJECT = 1 << 30  # what a fetched object may weigh: a reply beyond it is refused


class RemoteError(Exception):
    """The engine could not be reached or answered what it should not."""


# What a reader of a reply that is not ours may meet, besides RemoteError: the socket's
# errors, http.client's, and ValueError/EOFError (a chunk size that is not hex, a length
# that is not a number).
_FAILURES = (OSError, http.client.HTTPException, ValueError, EOFError)
_INTEGER = re.compile(rb"-?[0-9]{1,18}")


class Deadline:
    """The end of one operation on the store; ``left`` is the time there is still."""

    def __init__(self, seconds: float, what: str):
        self.seconds = seconds
        self.what = what
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise RemoteError(
                f"{self.what}: no whole answer within {self.seconds:g}s (store.timeout)"
            )
        return left


class _Timed:
    """A socket whose every send and receive ends by the deadline: what http.client and the
    Redis reader read through (``makefile``) and send through (``sendall``)."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        self.sock = sock
        self.deadline = deadline

    def recv_into(self, buf: memoryview) -> int:
        self.sock.settimeout(self.deadline.left())
        try:
            return self.sock.recv_into(buf)
        except TimeoutError:
            self.deadline.left()
            raise

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(self.deadline.left())
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self.deadline.left()
            raise

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> _Timed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Reader(io.RawIOBase):
    """The reading side of a ``_Timed`` socket; closing it leaves the socket open, as a
    socket's own ``makefile`` does."""

    def __init__(self, timed: _Timed):
        super().__init__()
        self.timed = timed

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        return self.timed.recv_into(buf)


class Engine(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, data: bytes) -> None: ...
    def has(self, key: str) -> bool: ...


def engine(url: str, timeout: float) -> Engine:
    u = urlsplit(url)
    if u.scheme.startswith("redis"):
        return Redis(url, timeout)
    return Http(url, timeout)


# -- Redis ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Redis:
    url: str
    timeout: float

    def get(self, key: str) -> bytes | None:
        reply = self._call(b"GET", key.encode())
        if reply is not None and not isinstance(reply, bytes):
            raise RemoteError(f"GET {key}: an integer where a value or nil belongs")
        return reply

    def put(self, key: str, data: bytes) -> None:
        if self._call(b"SET", key.encode(), data) != b"OK":
            raise RemoteError(f"SET {key}: not stored")

    def has(self, key: str) -> bool:
        reply = self._call(b"EXISTS", key.encode())
        if reply not in (0, 1) or isinstance(reply, bool):
            raise RemoteError(f"EXISTS {key}: {reply!r:.40} where 0 or 1 belongs")
        return reply == 1

    def _call(self, *command: bytes) -> bytes | int | None:
        u = urlsplit(self.url)
        setup: list[tuple[bytes, ...]] = []
        if u.password is not None:
            user = (unquote(u.username),) if u.username else ()
            setup.append((b"AUTH", *(x.encode() for x in user), unquote(u.password).encode()))
        db = parse_qs(u.query).get("db", [""])[0] if u.scheme == "redis+unix" else u.path[1:]
        if db:
            setup.append((b"SELECT", db.encode()))
        deadline = Deadline(self.timeout, f"{_shown(self.url)} {command[0].decode()}")
        try:
            with _Timed(self._connect(deadline), deadline) as sock:
                for c in [*setup, command]:
                    sock.sendall(_encode(c))
                reader = sock.makefile("rb")
                for _ in setup:
                    _reply(reader)
                return _reply(reader)
        except _FAILURES as e:
            raise RemoteError(f"{_shown(self.url)}: {_why(e)}") from None

    def _connect(self, deadline: Deadline) -> socket.socket:
        parts = urlsplit(self.url)
        if parts.scheme == "redis+unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(deadline.left())
                sock.connect(unquote(parts.path))
            except BaseException:
                sock.close()
                raise
            return sock
        return socket.create_connection((parts.hostname, parts.port or 6379), deadline.left())


def _encode(args: tuple[bytes, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = " ".join((str(e) or type(e).__name__).split())  # one line, whatever came
    return text if isinstance(e, RemoteError | OSError) else f"a malformed reply ({text:.120})"


def _integer(text: bytes, what: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise RemoteError(f"{what} {text[:40]!r} is not a number")
    return int(text)


def _reply(reader: BinaryIO) -> bytes | int | None:
    """One RESP reply: a simple string, an integer, a bulk string or nil. An error reply,
    and anything else, is a RemoteError."""
    line = reader.readline(1 << 16)
    if not line.endswith(b"\r\n"):
        raise RemoteError("the connection ended mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RemoteError(rest.decode("utf-8", "replace")[:200])
    if kind == b":":
        return _integer(rest, "an integer reply")
    if kind == b"$":
        size = _integer(rest, "a bulk length")
        if size == -1:
            return None
        if size < 0:
            raise RemoteError(f"a bulk length of {size}")
        if size > MAX_OBJECT:
            raise RemoteError(f"an object of {size} bytes: more than {MAX_OBJECT}")
        data = reader.read(size + 2)
        if len(data) != size + 2:
            raise RemoteError("the connection ended mid-reply")
        if data[-2:] != b"\r\n":
            raise RemoteError("a bulk reply longer than its length")
        return bytes(data[:-2])
    raise RemoteError(f"unexpected reply {line[:40]!r}")


# -- HTTP (WebDAV's GET/PUT/HEAD) ---------------------------------------------------------
@dataclass(frozen=True)
class Http:
    url: str
    timeout: float

    def get(self, key: str) -> bytes | None:
        status, body = self._request("GET", key)
        if status == 404:
            return None
        if status != 200:
            raise RemoteError(f"GET {key}: HTTP {status}")
        return body

    def put(self, key: str, data: bytes) -> None:
        status, _ = self._request("PUT", key, data)
        if status not in (200, 201, 204):
            raise RemoteError(f"PUT {key}: HTTP {status}")

    def has(self, key: str) -> bool:
        status, _ = self._request("HEAD", key)
        if status not in (200, 404):
            raise RemoteError(f"HEAD {key}: HTTP {status}")
        return status == 200

    def _request(self, method: str, key: str, body: bytes | None = None) -> tuple[int, bytes]:
        u = urlsplit(self.url)
        deadline = Deadline(self.timeout, f"{_shown(self.url)} {method}")
        conn: http.client.HTTPConnection
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(
                u.hostname or "", u.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=self.timeout)
        headers = {"Content-Type": "application/octet-stream"}
        if u.username is not None:
            token = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        try:
            conn.timeout = deadline.left()
            conn.connect()
            # every later byte, both ways, goes through the deadline (http.client only
            # calls sendall, makefile and close on its socket)
            conn.sock = _Timed(conn.sock, deadline)
            conn.request(method, f"{u.path.rstrip('/')}/{key}", body=body, headers=headers)
            return response(conn.getresponse(), method, key)
        except _FAILURES as e:
            raise RemoteError(f"{_shown(self.url)}: {_why(e)}") from None
        finally:
            conn.close()


def response(res: http.client.HTTPResponse, method: str, key: str) -> tuple[int, bytes]:
    """The status and the whole body of ``res``, which must be what its Content-Length
    says and at most MAX_OBJECT bytes; else RemoteError (as the readers' own errors)."""
    if res.status == 200 and method == "GET":
        text = res.getheader("Content-Length")
        size = None if text is None else _integer(text.strip().encode(), "Content-Length")
        if size is not None and not 0 <= size <= MAX_OBJECT:
            raise RemoteError(f"{method} {key}: an object of {size} bytes")
        chunks, got = [], 0
        while chunk := res.read(1 << 20):
            got += len(chunk)
            if got > MAX_OBJECT:
                raise RemoteError(f"{method} {key}: an object of more than {MAX_OBJECT} bytes")
            chunks.append(chunk)
        if size is not None and got != size:
            raise RemoteError(f"{method} {key}: {got} of {size} bytes, then the connection ended")
        return res.status, b"".join(chunks)
    res.read(1 << 16)  # an answer without an object: what a server says of it is not kept
    return res.status, b""


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    u = urlsplit(url)
    if u.password is None:
        return url
    return url.replace(f":{u.password}@", ":***@", 1)
