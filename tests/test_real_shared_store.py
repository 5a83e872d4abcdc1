"""The shared build store (issue 23) on real engines: a real redis-server and Debian's nginx
with its WebDAV module, each on 127.0.0.1 and stopped by its PID; Debian's 6.1 headers and
gcc-12.

Host A builds a package and uploads the build, signed with the fleet's key. Host B, at
another root with its own copy of the headers and the package's source at another path,
installs it with a gcc on PATH that fails when asked to compile: the build is fetched,
checked and installed, and its installed bytes are host A's (the same key signs the same
bytes). Host C finds the object poisoned (a module changed, the sha256 made to match, the
old signature kept): it refuses it, says so in one line, and tries to compile (which the
failing gcc fails), installing nothing. A read-only host fetches and never uploads."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    EXAMPLES,
    copy_headers,
    extmod,
    make_root,
    nginx_server,
    openssl_pair,
    redis_server,
)
from extmod.store import remote, shared
from test_real_store import CONF, _failing_gcc

pytestmark = pytest.mark.slow

KO = "updates/dkms/hello.ko"


def _host(base: Path, trees: dict[str, Any], url: str, pair: tuple[Path, Path], **more: str) -> Any:
    """A host: its root (own headers when ``copy``), a config naming the fleet key and
    the store, and the package's source; returns (root, config, source)."""
    kver = trees["gcc"]["kver"]
    headers = base / "headers"
    copy_headers(Path(trees["gcc"]["build"]), headers)
    root = make_root(base / "root", kver, str(headers))
    src = base / "elsewhere" / "stored-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(CONF)
    store = "".join(f'{k} = "{v}"\n' for k, v in {"url": url, **more}.items())
    conf = base / "extmod.toml"
    conf.write_text(f'[sign]\nkey = "{pair[0]}"\ncert = "{pair[1]}"\n[store]\n{store}')
    return root, conf, src


def _install(host: Any, kver: str, env: dict[str, str] | None = None) -> Any:
    root, conf, src = host
    return extmod(["--config", conf, "--root", root, "--json", "install", src, "-k", kver], env=env)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _poison(engine: remote.Engine, key: str) -> None:
    """The module in the object replaced by other bytes, the object's sha256 made to match,
    the uploader's signature kept: what someone who can write to the store but does not
    hold the fleet key can do."""
    data = engine.get(key)
    assert data is not None
    end = data.index(b"\n", len(shared.MAGIC))
    header = json.loads(data[len(shared.MAGIC) : end])
    old = tarfile.open(fileobj=io.BytesIO(data[end + 1 :]), mode="r:gz")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as new:
        for m in old.getmembers():
            f = old.extractfile(m)
            content = f.read() if f else b""
            if m.name.endswith(".ko"):
                content = content.replace(b"hello", b"HELLO")
            m.size = len(content)
            new.addfile(m, io.BytesIO(content) if m.isfile() else None)
    body = buf.getvalue()
    header["sha256"] = hashlib.sha256(body).hexdigest()
    engine.put(key, shared.MAGIC + json.dumps(header).encode() + b"\n" + body)


@pytest.mark.parametrize("engine", ["redis", "webdav"])
def test_a_second_host_installs_without_compiling(
    trees: dict[str, Any], tmp_path: Path, engine: str
) -> None:
    kver = trees["gcc"]["kver"]
    pair = openssl_pair(tmp_path / "keys")
    server = (
        redis_server(tmp_path / "redis")
        if engine == "redis"
        else nginx_server(trees["nginx"]["binary"], tmp_path / "nginx")
    )
    with server as url:
        a = _host(tmp_path / "a", trees, url, pair)
        r = _install(a, kver)
        assert r.rc == 0, r.err
        assert "uploaded to the shared store" in r.err, r.err
        (obj,) = (a[0] / "var/lib/extmod/store").glob("??/*/object.json")
        key = shared.key_of(obj.parent.name)
        store = remote.engine(url, 10)
        assert store.has(key)

        b = _host(tmp_path / "b", trees, url, pair)
        r = _install(b, kver, env=_failing_gcc(tmp_path / "bin"))
        assert r.rc == 0, r.out + r.err
        assert "fetched build" in r.err, r.err
        (built,) = [o for o in r.json()["outcomes"] if o["action"] == "built"]
        assert "from the store" in built["detail"], built
        assert _sha(b[0] / "lib/modules" / kver / KO) == _sha(a[0] / "lib/modules" / kver / KO)

        _poison(store, key)
        c = _host(tmp_path / "c", trees, url, pair)
        r = _install(c, kver, env=_failing_gcc(tmp_path / "bin"))
        assert r.rc != 0, r.out + r.err
        refused = [line for line in r.err.splitlines() if "is refused" in line]
        assert len(refused) == 1 and "does not verify" in refused[0], r.err
        log = c[0] / "var/lib/extmod/build/stored/1.0" / kver / "build.log"
        assert "no compile expected" in log.read_text()  # it went on to build here
        assert not (c[0] / "lib/modules" / kver / KO).exists()

        if engine == "redis":  # a read-only host builds (a source changed) and keeps it
            d = _host(tmp_path / "d", trees, url, pair, mode="read-only")
            (d[2] / "hello.c").write_text((d[2] / "hello.c").read_text() + "\n/* d */\n")
            r = _install(d, kver)
            assert r.rc == 0 and "uploaded" not in r.err, r.err
            (obj,) = (d[0] / "var/lib/extmod/store").glob("??/*/object.json")
            assert not store.has(shared.key_of(obj.parent.name))
