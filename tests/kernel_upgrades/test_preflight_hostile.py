"""``preflight --deb`` with hostile .deb files (issue 32): each is a real .deb (an ar archive
that Debian's dpkg-deb reads) whose data holds what a package must not: ``../`` and
absolute entries, a symlink out and a file written through it, a symlink that climbs out, a
hard link to /etc/passwd, a device node, a FIFO, a huge sparse file, a ``build`` link to /.
Each ends in one line naming the .deb and the entry, exit 3, nothing written outside the
state dir (the root, the dir the .deb is in and /etc checked), no process left, and the
root's records as they were. A well-formed .deb with the same entries minus the hostile
one stages."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import extmod, snapshot
from extmod.core import files

Entry = Callable[[tarfile.TarFile], None]


def _file(name: str, data: bytes = b"x\n") -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    return add


def _special(name: str, kind: bytes, target: str = "") -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = 8, 0
        tar.addfile(info)

    return add


HUGE = "./usr/src/huge"  # GNU tar adds it as a sparse member: 4 GiB of holes, a few bytes


def _dir(name: str) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)

    return add


BASE: list[Entry] = [_dir("./usr"), _dir("./usr/src"), _file("./usr/src/README")]

# case -> (the entries after BASE, what the one line names)
CASES: dict[str, tuple[list[Entry], str]] = {
    "a ../ entry": ([_file("./../../escaped")], r"'\./\.\./\.\./escaped' leads out"),
    "an absolute entry": ([_file("/etc/extmod-hostile")], r"'/etc/extmod-hostile' leads out"),
    "a symlink out, then a file through it": (
        [_special("./usr/src/out", tarfile.SYMTYPE, "/etc"), _file("./usr/src/out/passwd")],
        r"'\./usr/src/out/passwd' is written through a symlink",
    ),
    "a relative symlink that climbs out": (
        [_special("./usr/src/up", tarfile.SYMTYPE, "../../../../../etc")],
        r"'\./usr/src/up' is a symlink to '\.\./\.\./\.\./\.\./\.\./etc', out of",
    ),
    "a hard link to /etc/passwd": (
        [_special("./usr/src/pw", tarfile.LNKTYPE, "/etc/passwd")],
        r"'\./usr/src/pw' is a hard link to '/etc/passwd'",
    ),
    "a hard link to ../ of the root": (
        [_special("./usr/src/pw", tarfile.LNKTYPE, "../../etc/passwd")],
        r"is a hard link to '\.\./\.\./etc/passwd'",
    ),
    "a block device node": (
        [_special("./usr/src/sda", tarfile.BLKTYPE)],
        r"'\./usr/src/sda' is a device node",
    ),
    "a char device node": (
        [_special("./usr/src/mem", tarfile.CHRTYPE)],
        r"'\./usr/src/mem' is a device node",
    ),
    "a FIFO": ([_special("./usr/src/pipe", tarfile.FIFOTYPE)], r"'\./usr/src/pipe' is a FIFO"),
    "a huge sparse file": ([], r"'\./usr/src/huge' is 4294967296 bytes, more than 1073741824"),
    "a build link to /": (
        [
            _dir("./lib"),
            _dir("./lib/modules"),
            _dir("./lib/modules/9.9.9-hostile"),
            _special("./lib/modules/9.9.9-hostile/build", tarfile.SYMTYPE, "/"),
        ],
        r"--deb: no kernel headers in linux-headers-hostile_1_all\.deb",
    ),
    "a build link that climbs out": (
        [
            _dir("./lib"),
            _dir("./lib/modules"),
            _dir("./lib/modules/9.9.9-hostile"),
            _special("./lib/modules/9.9.9-hostile/build", tarfile.SYMTYPE, "../../../../../../../"),
        ],
        r"'\./lib/modules/9\.9\.9-hostile/build' is a symlink to .* out of",
    ),
}


def _deb(d: Path, entries: list[Entry], sparse: bool = False) -> Path:
    """An ar archive as dpkg-deb -b makes one: debian-binary, control.tar.gz, data.tar.xz.
    ``sparse``: GNU tar appends a 4 GiB sparse file (holes only) to the data."""
    d.mkdir(parents=True)
    control = io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:gz") as tar:
        text = (
            b"Package: linux-headers-hostile\nVersion: 1\nArchitecture: all\n"
            b"Maintainer: t <t@t>\nDescription: t\n"
        )
        info = tarfile.TarInfo("./control")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    (d / "control.tar.gz").write_bytes(control.getvalue())
    with tarfile.open(d / "data.tar", mode="w", format=tarfile.GNU_FORMAT) as tar:
        for add in [*BASE, *entries]:
            add(tar)
    if sparse:
        (d / "tree/usr/src").mkdir(parents=True)
        with open(d / "tree" / HUGE, "wb") as f:
            f.truncate(4 << 30)
        subprocess.run(["tar", "-S", "-rf", "data.tar", "-C", "tree", HUGE], cwd=d, check=True)
        shutil.rmtree(d / "tree")  # (4 GiB to read for the snapshot of the .deb's dir)
    subprocess.run(["xz", "-0", "-T1", str(d / "data.tar")], check=True)
    (d / "debian-binary").write_text("2.0\n")
    out = d / "linux-headers-hostile_1_all.deb"
    subprocess.run(
        ["ar", "rc", str(out), "debian-binary", "control.tar.gz", "data.tar.xz"],
        cwd=d,
        check=True,
    )
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_deb_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    entries, expect = CASES[case]
    deb = _deb(tmp_path / "in", entries, sparse=case == "a huge sparse file")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    assert extmod(["--root", root, "add", _example(tmp_path)]).rc == 0
    state = root / "var/lib/extmod"
    records = snapshot(state / "packages")
    outside = {p: snapshot(p) for p in (tmp_path / "in", root / "etc")}
    passwd = Path("/etc/passwd").read_bytes()
    r = extmod(["--root", root, "preflight", "--deb", deb])
    lines = r.err.strip().splitlines()
    assert r.rc == 3 and len(lines) == 1, (r.rc, r.err)
    assert deb.name in lines[0] and re.search(expect, lines[0]), lines[0]
    assert not r.left_running()
    assert {p: snapshot(p) for p in outside} == outside
    assert Path("/etc/passwd").read_bytes() == passwd
    assert not Path("/etc/extmod-hostile").exists() and not (tmp_path / "escaped").exists()
    assert snapshot(state / "packages") == records  # nothing lost
    staged = list((state / "preflight").rglob("*")) if (state / "preflight").exists() else []
    assert not any(p.is_block_device() or p.is_char_device() or p.is_fifo() for p in staged)
    assert not any(p.name.endswith(".tar") for p in staged), staged  # the data tar is gone
    assert not any(p.is_file() and p.stat().st_size > 1 << 20 for p in staged)


def test_the_same_deb_without_the_hostile_entry_stages(tmp_path: Path) -> None:
    """The control case: the harness's .deb is one dpkg-deb reads, and extmod unpacks it
    (then finds no kernel in it, which is the one line)."""
    deb = _deb(tmp_path / "in", [_special("./usr/src/ok", tarfile.SYMTYPE, "/usr/include")])
    root = tmp_path / "root"
    r = extmod(["--root", root, "preflight", "--deb", deb])
    assert r.rc == 3 and "no kernel headers in" in r.err, r.err
    staged = next((root / "var/lib/extmod/preflight").glob("*/usr/src"))
    assert (staged / "README").read_text() == "x\n" and (staged / "ok").is_symlink()


def _example(tmp_path: Path) -> Path:
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "dkms.conf").write_text(
        'PACKAGE_NAME="calm"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="calm"\n'
        'DEST_MODULE_LOCATION[0]="/extra"\nAUTOINSTALL="yes"\n'
    )
    (src / "Kbuild").write_text("obj-m := calm.o\n")
    (src / "calm.c").write_text("int x;\n")
    return src


# files.unpack's own checks, as on a Python without tar filters (Debian 12's 3.11.2, where
# the .deb runs): the same hostile entries refused in process, a plain archive unpacked.
UNPACK_CASES = [
    "a ../ entry",
    "an absolute entry",
    "a symlink out, then a file through it",
    "a relative symlink that climbs out",
    "a hard link to /etc/passwd",
    "a hard link to ../ of the root",
    "a block device node",
    "a char device node",
    "a FIFO",
]


@pytest.mark.parametrize("case", UNPACK_CASES)
def test_unpack_refuses_each_without_pythons_filter(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "python_filter", dict)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for add in [*BASE, *CASES[case][0]]:
            add(tar)
    dest = tmp_path / "dest"
    dest.mkdir()
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar, pytest.raises(files.UnsafeMember):
        files.unpack(tar, dest, absolute_links=True)
    assert not (tmp_path / "escaped").exists() and not Path("/etc/extmod-hostile").exists()
    assert not any(
        p.is_block_device() or p.is_char_device() or p.is_fifo() for p in dest.rglob("*")
    )


def test_unpack_without_pythons_filter_makes_modes_plain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "python_filter", dict)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("setuid")
        info.size, info.mode = 2, 0o6777
        tar.addfile(info, io.BytesIO(b"x\n"))
        link = tarfile.TarInfo("build")
        link.type, link.linkname = tarfile.SYMTYPE, "/usr/src/linux-headers-x"
        tar.addfile(link)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        files.unpack(tar, tmp_path, absolute_links=True)
    assert (tmp_path / "setuid").stat().st_mode & 0o7777 == 0o755
    assert os.readlink(tmp_path / "build") == "/usr/src/linux-headers-x"
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar, pytest.raises(files.UnsafeMember, match="a link to"):
        files.unpack(tar, tmp_path / "again")  # no absolute link where none is expected
