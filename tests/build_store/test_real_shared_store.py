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
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    EXAMPLES,
    REPO,
    Ran,
    copy_headers,
    extmod,
    failing_gcc,
    make_root,
    nginx_server,
    openssl_pair,
    redis_server,
)
from extmod.store import remote, shared
from test_real_store import CONF
from test_shared_store_replies import HTTP, RESP, serving

pytestmark = pytest.mark.slow

KO = "updates/dkms/hello.ko"


def _host(
    base: Path, trees: dict[str, Any], url: str, pair: tuple[Path, Path], **more: str | int
) -> Any:
    """A host: its root (own headers when ``copy``), a config naming the fleet key and
    the store, and the package's source; returns (root, config, source)."""
    kver = trees["gcc"]["kver"]
    headers = base / "headers"
    copy_headers(Path(trees["gcc"]["build"]), headers)
    root = make_root(base / "root", kver, str(headers))
    src = base / "elsewhere" / "stored-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(CONF)
    store = "".join(f"{k} = {json.dumps(v)}\n" for k, v in {"url": url, **more}.items())
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
        r = _install(b, kver, env=failing_gcc(tmp_path / "bin"))
        assert r.rc == 0, r.out + r.err
        assert "fetched build" in r.err, r.err
        (built,) = [o for o in r.json()["outcomes"] if o["action"] == "built"]
        assert "from the store" in built["detail"], built
        assert _sha(b[0] / "lib/modules" / kver / KO) == _sha(a[0] / "lib/modules" / kver / KO)

        _poison(store, key)
        c = _host(tmp_path / "c", trees, url, pair)
        r = _install(c, kver, env=failing_gcc(tmp_path / "bin"))
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


# -- a store that answers badly (issue 32) -------------------------------------------------------
BAD = {
    "redis: a bulk length that is not a number": ("redis", RESP["bulk length not a number"], 0.0),
    "http: Content-Length not a number": ("http", HTTP["Content-Length not a number"], 0.0),
    "redis: a slow drip": ("redis", RESP["slow drip"], 0.5),
    "http: a slow drip": ("http", HTTP["slow drip headers"], 0.5),
}


@pytest.fixture(scope="module")
def plain_install(trees: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> float:
    """What the same install takes with no shared store, for comparison."""
    base = tmp_path_factory.mktemp("plain")
    pair = openssl_pair(base / "keys")
    root, conf, src = _host(base, trees, "redis://127.0.0.1:1", pair)
    conf.write_text(conf.read_text().split("[store]")[0])
    start = time.monotonic()
    assert _install((root, conf, src), trees["gcc"]["kver"]).rc == 0
    return time.monotonic() - start


@pytest.mark.parametrize("case", list(BAD))
def test_a_store_that_answers_badly_costs_speed_never_a_build(
    trees: dict[str, Any], tmp_path: Path, case: str, plain_install: float
) -> None:
    """Through a real install: one note, the build made here and installed, exit 0; the
    store is asked once (the upload is not tried after the fetch failed), and a dripping
    store costs at most store.timeout + 1 s (set to 2)."""
    kver = trees["gcc"]["kver"]
    kind, reply, drip = BAD[case]
    pair = openssl_pair(tmp_path / "keys")
    with serving(reply, drip) as server:
        url = (
            f"redis://127.0.0.1:{server.port}"
            if kind == "redis"
            else (f"http://127.0.0.1:{server.port}/s")
        )
        host = _host(tmp_path / "h", trees, url, pair, timeout=2)
        start = time.monotonic()
        r = _install(host, kver)
        took = time.monotonic() - start
        asked = server.connections
    assert r.rc == 0, r.err
    notes = [line for line in r.err.splitlines() if "shared store" in line]
    assert len(notes) == 1 and "cannot be used" in notes[0], r.err
    assert "internal error" not in r.err
    assert (host[0] / "lib/modules" / kver / KO).is_file()
    assert asked == 1, f"the store was asked {asked} times"
    assert took < plain_install + 2 + 1 + 2, (took, plain_install)  # + 2 s: a loaded machine
    assert not r.left_running()


def test_killed_during_an_upload_then_the_next_command(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """SIGKILL while the upload waits on the store (a server that takes the object and
    never answers): nothing half-written is left in the state tree, no process of it is
    left, and the next install (the store working) installs, taking the build the killed
    one filed locally, and uploads it."""
    kver = trees["gcc"]["kver"]
    pair = openssl_pair(tmp_path / "keys")
    with serving(None) as hang, redis_server(tmp_path / "redis") as url:
        # a write-only host: no fetch; it builds, files, and its upload's EXISTS hangs
        host = _host(
            tmp_path / "h", trees, f"redis://127.0.0.1:{hang.port}", pair, mode="write-only",
            timeout=120,
        )  # fmt: skip
        root, conf, src = host
        proc = subprocess.Popen(
            [sys.executable, "-m", "extmod", "--config", str(conf), "--root", str(root),
             "install", str(src), "-k", kver],
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO / "src"), "LANG": "C.UTF-8"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while hang.connections < 1:
            assert proc.poll() is None and time.monotonic() < deadline, "no upload began"
            time.sleep(0.05)
        time.sleep(0.3)  # the EXISTS sent, its answer awaited
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -9
        assert not Ran(-9, "", "", proc.pid).left_running()
        state = root / "var/lib/extmod"
        assert not list(state.rglob("*.extmod-tmp")), list(state.rglob("*.extmod-tmp"))
        # the build was filed locally before its upload began; no record of it yet
        assert extmod(["--root", root, "status"]).out.strip() == "stored/1.0: added"
        # the next command, with the store working: it compiles nothing
        conf.write_text(
            conf.read_text()
            .replace(f"redis://127.0.0.1:{hang.port}", url)
            .replace("write-only", "read-write")
        )
        r = _install(host, kver, env=failing_gcc(tmp_path / "bin"))
        assert r.rc == 0, r.err
        assert "from the build store" in r.err, r.err
        assert (root / "lib/modules" / kver / KO).is_file()
        assert not list(state.rglob("*.extmod-tmp"))
        assert extmod(["--root", root, "status"]).out.strip().endswith(": installed")
