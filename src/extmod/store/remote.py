"""The engines a shared build store lives on (issue 23): the ones fleets already run for
ccache's remote storage, one object per key.

- ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` and ``redis+unix://[[USER]:PASSWORD@]/PATH
  [?db=DB]``: GET, SET and EXISTS over RESP (the Redis protocol), a connection per command
  line. Bound the store with the server's own ``maxmemory`` and ``maxmemory-policy
  allkeys-lru``.
- ``http://`` and ``https://HOST[:PORT]/PATH``: GET, PUT and HEAD of ``PATH/KEY``, as nginx
  serves them with its WebDAV module (``dav_methods PUT;``) or any HTTP cache that speaks
  them; basic authentication from the URL's user and password.

Every operation has a timeout (``store.timeout``); any failure is a ``RemoteError``, which
callers turn into a one-line warning and a local build: a store that is down or slow costs a
fleet its speed, never a build.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from dataclasses import dataclass
from typing import BinaryIO, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

MAX_OBJECT = 1 << 30  # what a fetched object may weigh: a reply beyond it is refused


class RemoteError(Exception):
    """The engine could not be reached or answered what it should not."""


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
            raise RemoteError(f"GET {key}: unexpected reply")
        return reply

    def put(self, key: str, data: bytes) -> None:
        if self._call(b"SET", key.encode(), data) != b"OK":
            raise RemoteError(f"SET {key}: not stored")

    def has(self, key: str) -> bool:
        return self._call(b"EXISTS", key.encode()) == 1

    def _call(self, *command: bytes) -> bytes | int | None:
        u = urlsplit(self.url)
        setup: list[tuple[bytes, ...]] = []
        if u.password is not None:
            user = (unquote(u.username),) if u.username else ()
            setup.append((b"AUTH", *(x.encode() for x in user), unquote(u.password).encode()))
        db = parse_qs(u.query).get("db", [""])[0] if u.scheme == "redis+unix" else u.path[1:]
        if db:
            setup.append((b"SELECT", db.encode()))
        try:
            with self._connect() as sock:
                sock.settimeout(self.timeout)
                for c in [*setup, command]:
                    sock.sendall(_encode(c))
                reader = sock.makefile("rb")
                for _ in setup:
                    _reply(reader)
                return _reply(reader)
        except OSError as e:
            raise RemoteError(f"{_shown(self.url)}: {e.strerror or e}") from None

    def _connect(self) -> socket.socket:
        parts = urlsplit(self.url)
        if parts.scheme == "redis+unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(unquote(parts.path))
            return sock
        return socket.create_connection((parts.hostname, parts.port or 6379), self.timeout)


def _encode(args: tuple[bytes, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _reply(reader: BinaryIO) -> bytes | int | None:
    """One RESP reply: a simple string, an integer, a bulk string or nil. An error reply
    is a RemoteError."""
    line = reader.readline(1 << 16)
    if not line.endswith(b"\r\n"):
        raise RemoteError("the connection ended mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RemoteError(rest.decode("utf-8", "replace")[:200])
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        if size > MAX_OBJECT:
            raise RemoteError(f"an object of {size} bytes: more than {MAX_OBJECT}")
        data = reader.read(size + 2)
        if len(data) != size + 2:
            raise RemoteError("the connection ended mid-reply")
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
            conn.request(method, f"{u.path.rstrip('/')}/{key}", body=body, headers=headers)
            res = conn.getresponse()
            size = int(res.getheader("Content-Length") or 0)
            if size > MAX_OBJECT:
                raise RemoteError(f"{method} {key}: an object of {size} bytes")
            data = res.read(MAX_OBJECT + 1) if method == "GET" else res.read()
            if len(data) > MAX_OBJECT:
                raise RemoteError(f"{method} {key}: an object of more than {MAX_OBJECT} bytes")
            return res.status, data
        except (OSError, http.client.HTTPException) as e:
            raise RemoteError(f"{_shown(self.url)}: {e}") from None
        finally:
            conn.close()


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    u = urlsplit(url)
    if u.password is None:
        return url
    return url.replace(f":{u.password}@", ":***@", 1)
