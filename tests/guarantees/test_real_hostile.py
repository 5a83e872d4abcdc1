"""Issue 5: hostile and broken input, one test per case. Each gets a one-line error naming
the file and the field (or line), its documented exit code, and leaves the filesystem as it
was outside extmod's state dir (checked: the whole root but var/lib/extmod, and the source
dir). Real kernel: Debian's gcc headers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, NOBODY, copy_headers, dkms, extmod, make_root, snapshot

pytestmark = pytest.mark.slow

GOOD = (
    'PACKAGE_NAME="hostile"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="hello"\n'
    'DEST_MODULE_LOCATION[0]="/extra"\n'
)


@dataclass
class Case:
    conf: str | bytes | None  # dkms.conf of the package (None: no dkms.conf at all)
    rc: int
    expect: str  # regex the one error line must match ({conf}, {src}, {root} filled in)
    verb: str = "add"  # add, install (of the source dir, -k the gcc kernel)
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path, Path, dict[str, Any]], None] | None = None  # (src, root, trees)
    user: int | None = None
    extra: tuple[str, ...] = ()  # more arguments after the verb's own
    nothing_added: bool = False  # refused before the package was registered
    target: str | None = None  # what the verb is given instead of the source dir
    read_only_state: bool = False  # var/lib/extmod a read-only bind mount (unshare -m)
    # damaged state: ROOT has the package installed, then this changes its state dir
    damage: Callable[[Path, str], None] | None = None


def _link(name: str, target: str) -> Callable[[Path, Path, dict[str, Any]], None]:
    def setup(src: Path, root: Path, trees: dict[str, Any]) -> None:
        (src / name).symlink_to(target)

    return setup


def _in_usr_src(src: Path, root: Path, trees: dict[str, Any]) -> None:
    """The package in ROOT/usr/src, as its .deb puts it: install NAME/VERSION adds it from
    there, writing in the state dir only."""
    shutil.copytree(src, root / "usr/src" / src.name, symlinks=True)


def _big_file(path: Path, size: int) -> None:
    path.write_text("#" * (size - 1) + "\n")


def _fifo(src: Path, root: Path, trees: dict[str, Any]) -> None:
    os.mkfifo(src / "pipe")


def _override(text: bytes) -> Callable[[Path, Path, dict[str, Any]], None]:
    def setup(src: Path, root: Path, trees: dict[str, Any]) -> None:
        (root / "etc/dkms").mkdir(parents=True)
        (root / "etc/dkms/hostile.conf").write_bytes(text)

    return setup


def _kernel(edit: Callable[[Path], None]) -> Callable[[Path, Path, dict[str, Any]], None]:
    """The root's kernel becomes a copy of the gcc headers, changed by ``edit``."""

    def setup(src: Path, root: Path, trees: dict[str, Any]) -> None:
        tree = root.parent / "headers"
        copy_headers(Path(trees["gcc"]["build"]), tree)
        edit(tree)
        link = root / "lib/modules" / trees["gcc"]["kver"] / "build"
        link.unlink()
        link.symlink_to(os.path.relpath(tree, link.parent))

    return setup


def _no_config(tree: Path) -> None:
    (tree / "include/config/auto.conf").unlink()
    (tree / ".config").unlink()


def _gcc99(tree: Path) -> None:
    for name in ("include/config/auto.conf", ".config"):
        f = tree / name
        text = re.sub(r"CONFIG_GCC_VERSION=\d+", "CONFIG_GCC_VERSION=990000", f.read_text())
        f.unlink()
        f.write_text(text)


def _sign_config(key: str, cert: str, make: str) -> Callable[[Path, Path, dict[str, Any]], None]:
    def setup(src: Path, root: Path, trees: dict[str, Any]) -> None:
        keys = root.parent / "keys"
        keys.mkdir()
        if make:
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-new",
                    "-x509",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=t",
                    "-newkey",
                    "rsa:2048",
                    "-keyout",
                    keys / "k.pem",
                    "-outform",
                    "DER",
                    "-out",
                    keys / "c.der",
                    *make.split(),
                ],
                check=True,
                capture_output=True,
            )
        (root / "etc/extmod").mkdir(parents=True)
        (root / "etc/extmod/config.toml").write_text(
            f'[sign]\nkey = "{keys / key}"\ncert = "{keys / cert}"\n'
        )

    return setup


def _conf(body: str) -> str:
    return 'PACKAGE_NAME="hostile"\nPACKAGE_VERSION="1.0"\n' + body


# -- damaged state: ROOT holds hostile/1.0 installed for the gcc kernel (installed_root) ----
# (paths relative to the state dir; {kver}: the gcc kernel's release)
INSTALLED = "installed/{kver}/x86_64/hostile.json"
BUILT = "packages/hostile/1.0/built/{kver}/x86_64/build.json"
ADDED = "packages/hostile/1.0/added.json"
JOURNAL = "journal/{kver}/x86_64/hostile.json"
Damage = Callable[[Path, str], None]  # (the state dir, the kernel release)


def _write(rel: str, data: bytes) -> Damage:
    def damage(state: Path, kver: str) -> None:
        f = state / rel.format(kver=kver)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.unlink(missing_ok=True)
        f.write_bytes(data.replace(b"{kver}", kver.encode()))

    return damage


def _edit(rel: str, change: Callable[[dict[str, Any]], None]) -> Damage:
    """The record with one field changed, as a hand edit or another tool would leave it."""

    def damage(state: Path, kver: str) -> None:
        data = json.loads((state / rel.format(kver=kver)).read_text())
        change(data)
        _write(rel, json.dumps(data).encode())(state, kver)

    return damage


def _truncated(rel: str) -> Damage:
    """Cut mid-write, as a crash on a filesystem without extmod's rename would leave it."""

    def damage(state: Path, kver: str) -> None:
        _write(rel, (state / rel.format(kver=kver)).read_bytes()[:40])(state, kver)

    return damage


def _special(rel: str, make: Callable[[Path], None]) -> Damage:
    def damage(state: Path, kver: str) -> None:
        (state / rel.format(kver=kver)).unlink()
        make(state / rel.format(kver=kver))

    return damage


def _journal_link(state: Path, kver: str) -> None:
    f = state / JOURNAL.format(kver=kver)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.symlink_to("/etc/hostname")


def _set(path: list[str | int], value: object) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        node: Any = data
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value

    return change


def _state_case(verb: str, damage: Damage, rel: str, expect: str) -> Case:
    """A command on a damaged state tree: refused before it changes anything (exit 3), one
    line naming the record file and the field."""
    return Case(
        GOOD,
        3,
        r"{root}/var/lib/extmod/" + rel.replace("{kver}", "{kver_re}") + ": " + expect,
        verb="raw",
        extra=tuple(verb.replace("KVER", "{kver}").split()),
        damage=damage,
    )


F = r"{conf}: "  # every dkms.conf error starts with the file
COPY = r"{root}/usr/src/hostile-1\.0/dkms\.conf: "  # the copy an add made of it
CASES: dict[str, Case] = {
    # -- bash that does not parse, or does not finish -----------------------------------------
    "unterminated quote": Case('PACKAGE_NAME="hostile\n', 3, F + r"line \d+: .*unexpected"),
    "syntax error": Case(GOOD + "if then fi\n", 3, F + r"line 5: syntax error"),
    "loops forever": Case(
        GOOD + "while :; do :; done\n",
        3,
        F + "evaluation took over 2 s",
        env={"EXTMOD_DKMS_CONF_TIMEOUT": "2"},
    ),
    "exits early": Case("exit 1\n" + GOOD, 3, F + "PACKAGE_NAME: not set"),
    # (CRLF line ends read as DKMS 3.2 reads them: one trailing CR per value dropped; a CR
    # inside a value stays, and a name with one is no name)
    "a CR inside PACKAGE_NAME": Case(
        GOOD.replace('PACKAGE_NAME="hostile"', 'PACKAGE_NAME="hos\rtile"'),
        3,
        F + r"PACKAGE_NAME: 'hos\\rtile' is not a valid name",
    ),
    "NUL byte": Case(GOOD.encode() + b"X=\0\n", 3, F + "line 5: a NUL byte"),
    "huge file": Case(GOOD + "#" * (2 << 20) + "\n", 3, F + r"\d+ bytes: larger than"),
    "no dkms.conf": Case(None, 3, r"{src}/dkms\.conf: no such file"),
    "dkms.conf is a dir": Case(
        None,
        3,
        r"{src}/dkms\.conf: not a regular file",
        setup=lambda s, r, t: (s / "dkms.conf").mkdir(),
    ),
    # (issue 22: both were "no such file"; a FIFO must never be opened, /dev/zero never read)
    "dkms.conf is a FIFO": Case(
        None,
        3,
        r"{src}/dkms\.conf: not a regular file",
        setup=lambda s, r, t: os.mkfifo(s / "dkms.conf"),
    ),
    "dkms.conf links to /dev/zero": Case(
        None, 3, r"{src}/dkms\.conf: not a regular file", setup=_link("dkms.conf", "/dev/zero")
    ),
    # -- identity ---------------------------------------------------------------------------------
    "no PACKAGE_NAME": Case('PACKAGE_VERSION="1"\n', 3, F + "PACKAGE_NAME: not set"),
    "no PACKAGE_VERSION": Case('PACKAGE_NAME="hostile"\n', 3, F + "PACKAGE_VERSION: not set"),
    "empty PACKAGE_NAME": Case(
        'PACKAGE_NAME=""\nPACKAGE_VERSION="1"\n', 3, F + "PACKAGE_NAME: not set"
    ),
    "name with a space": Case(
        'PACKAGE_NAME="my pkg"\nPACKAGE_VERSION="1"\n',
        3,
        F + "PACKAGE_NAME: 'my pkg' is not a valid name",
    ),
    # dkms 3.0.10's safe_source re-reads values through an unquoted eval echo: a newline
    # becomes a blank, as it does under DKMS (test_dkms_semantics.py compares the two)
    "name with a newline": Case(
        "PACKAGE_NAME=$'a\\nb'\nPACKAGE_VERSION=\"1\"\n",
        3,
        F + r"PACKAGE_NAME: 'a b' is not a valid name",
    ),
    "name with a slash": Case(
        'PACKAGE_NAME="../../etc"\nPACKAGE_VERSION="1"\n',
        3,
        F + "PACKAGE_NAME: .* is not a valid name",
    ),
    "version ..": Case(
        'PACKAGE_NAME="hostile"\nPACKAGE_VERSION=".."\n',
        3,
        F + "PACKAGE_VERSION: '..' is not a valid name",
    ),
    "version with a slash": Case(
        'PACKAGE_NAME="hostile"\nPACKAGE_VERSION="1/2"\n',
        3,
        F + "PACKAGE_VERSION: '1/2' is not a valid name",
    ),
    # (issue 22: ENAMETOOLONG was an internal error and left an empty dir behind)
    "name of 300 characters": Case(
        f'PACKAGE_NAME="{"n" * 300}"\nPACKAGE_VERSION="1"\n',
        3,
        F + r"PACKAGE_NAME: NAME-VERSION is 302 characters: at most 200",
    ),
    "version of 300 characters": Case(
        f'PACKAGE_NAME="hostile"\nPACKAGE_VERSION="{"1" * 300}"\n',
        3,
        F + r"PACKAGE_VERSION: NAME-VERSION is 308 characters: at most 200",
    ),
    # -- module arrays ----------------------------------------------------------------------------
    "empty arrays": Case(
        _conf("BUILT_MODULE_NAME=()\nDEST_MODULE_LOCATION=()\n"),
        3,
        F + "BUILT_MODULE_NAME: no module listed",
    ),
    "sparse arrays": Case(
        _conf(
            'BUILT_MODULE_NAME[0]="a"\nBUILT_MODULE_NAME[2]="b"\n'
            'DEST_MODULE_LOCATION[0]="/extra"\n'
            'DEST_MODULE_LOCATION[2]="/extra"\n'
        ),
        3,
        F + r"BUILT_MODULE_NAME\[1\]: not set",
    ),
    # re-read into DKMS's indexed arrays, [x] is bash arithmetic on an unset name: 0
    "index not a number": Case(
        _conf('declare -A BUILT_MODULE_NAME\nBUILT_MODULE_NAME[x]="a"\n'),
        3,
        F + r"DEST_MODULE_LOCATION\[0\]: not set",
    ),
    "module name with a slash": Case(
        _conf('BUILT_MODULE_NAME[0]="../evil"\nDEST_MODULE_LOCATION[0]="/extra"\n'),
        3,
        F + r"BUILT_MODULE_NAME\[0\]: '../evil' is not a module",
    ),
    "module name with a space": Case(
        _conf('BUILT_MODULE_NAME[0]="a b"\nDEST_MODULE_LOCATION[0]="/extra"\n'),
        3,
        F + r"BUILT_MODULE_NAME\[0\]: 'a b' is not a module",
    ),
    "module name with a newline": Case(
        _conf("BUILT_MODULE_NAME[0]=$'a\\nb'\nDEST_MODULE_LOCATION[0]=\"/extra\"\n"),
        3,
        F + r"BUILT_MODULE_NAME\[0\]: 'a b' is not a module",
    ),
    "module name ends in .ko": Case(
        _conf('BUILT_MODULE_NAME[0]="a.ko"\nDEST_MODULE_LOCATION[0]="/extra"\n'),
        3,
        F + r"BUILT_MODULE_NAME\[0\]: 'a.ko' must not end in",
    ),
    "dest name with a slash": Case(
        GOOD + 'DEST_MODULE_NAME[0]="x/y"\n', 3, F + r"DEST_MODULE_NAME\[0\]: 'x/y' is not a module"
    ),
    "no DEST_MODULE_LOCATION": Case(
        _conf('BUILT_MODULE_NAME[0]="a"\nBUILT_MODULE_NAME[1]="b"\n'),
        3,
        F + r"DEST_MODULE_LOCATION\[0\]: not set",
    ),
    "DEST_MODULE_LOCATION escapes": Case(
        _conf('BUILT_MODULE_NAME[0]="a"\nDEST_MODULE_LOCATION[0]="/kernel/../../etc"\n'),
        3,
        F + r"DEST_MODULE_LOCATION\[0\]: .* stay below",
    ),
    "DEST_MODULE_LOCATION absolute": Case(
        _conf('BUILT_MODULE_NAME[0]="a"\nDEST_MODULE_LOCATION[0]="/etc/modules"\n'),
        3,
        F + r"DEST_MODULE_LOCATION\[0\]: '/etc/modules'",
    ),
    "DEST_MODULE_LOCATION relative": Case(
        _conf('BUILT_MODULE_NAME[0]="a"\nDEST_MODULE_LOCATION[0]="kernel/x"\n'),
        3,
        F + r"DEST_MODULE_LOCATION\[0\]: 'kernel/x'",
    ),
    "BUILT_MODULE_LOCATION escapes": Case(
        GOOD + 'BUILT_MODULE_LOCATION[0]="../../x"\n',
        3,
        F + r"BUILT_MODULE_LOCATION\[0\]: .* leaves the",
    ),
    "BUILT_MODULE_LOCATION absolute": Case(
        GOOD + 'BUILT_MODULE_LOCATION[0]="/tmp"\n',
        3,
        F + r"BUILT_MODULE_LOCATION\[0\]: '/tmp/' leaves",
    ),
    # -- patches and matches ----------------------------------------------------------------------
    # (a package whose PATCH cannot be applied is added, as DKMS 3.2 adds it; its build
    # refuses it, before anything of the build is made)
    "PATCH escapes": Case(
        GOOD + 'PATCH[0]="../../x.patch"\n',
        3,
        COPY + r"PATCH\[0\]: '../../x.patch': give a path in patches/",
        verb="install",
        target="hostile/1.0",
        setup=_in_usr_src,
    ),
    "PATCH absolute": Case(
        GOOD + 'PATCH[0]="/etc/passwd"\n',
        3,
        COPY + r"PATCH\[0\]: '/etc/passwd': give a path in patches/",
        verb="install",
        target="hostile/1.0",
        setup=_in_usr_src,
    ),
    "PATCH missing": Case(
        GOOD + 'PATCH[0]="gone.patch"\n',
        3,
        COPY + r"PATCH\[0\]: patches/gone\.patch does not exist",
        verb="install",
        target="hostile/1.0",
        setup=_in_usr_src,
    ),
    "bad MAKE_MATCH": Case(GOOD + 'MAKE[0]="make"\nMAKE_MATCH[0]="("\n', 3, F + r"MAKE_MATCH\[0\]"),
    "bad BUILD_EXCLUSIVE_KERNEL": Case(
        GOOD + 'BUILD_EXCLUSIVE_KERNEL="("\n', 3, F + "BUILD_EXCLUSIVE_KERNEL"
    ),
    # -- /etc/dkms overrides ----------------------------------------------------------------------
    "override with a NUL byte": Case(
        GOOD,
        3,
        r"{root}/etc/dkms/hostile\.conf: line 1: a NUL byte",
        setup=_override(b'MAKE[0]="make\0"\n'),
    ),
    "override with a bad field": Case(
        GOOD,
        3,
        F + r"DEST_MODULE_LOCATION\[0\]: '/boot'",
        setup=_override(b'DEST_MODULE_LOCATION[0]="/boot"\n'),
    ),
    # -- the source tree --------------------------------------------------------------------------
    "dkms.conf links outside": Case(
        None, 3, r"{src}/dkms\.conf: symlink leads outside", setup=_link("dkms.conf", "/etc/passwd")
    ),
    "a FIFO in the source": Case(GOOD, 3, r"{src}/pipe: not a regular file or dir", setup=_fifo),
    # -- the kernel -------------------------------------------------------------------------------
    "kernel without auto.conf": Case(
        GOOD,
        4,
        r".*headers is not a configured kernel tree: "
        r"include/config/auto\.conf",
        verb="install",
        setup=_kernel(_no_config),
    ),
    "kernel's compiler missing": Case(
        GOOD, 5, r"gcc-99 not found: apt-get install gcc-99", verb="install", setup=_kernel(_gcc99)
    ),
    # -- signing keys -----------------------------------------------------------------------------
    "passphrase-protected key": Case(
        GOOD,
        3,
        r"sign\.key: .*k\.pem is protected by a "
        r"passphrase",
        verb="install",
        setup=_sign_config("k.pem", "c.der", "-passout pass:pw"),
    ),
    "missing key": Case(
        GOOD,
        3,
        r"sign\.key: .*missing\.pem does not exist",
        verb="install",
        setup=_sign_config("missing.pem", "c.der", "-nodes"),
    ),
    "an unreadable file": Case(
        GOOD,
        3,
        r"{src}/hello\.c: cannot read it \(permission denied\)",
        setup=lambda s, r, t: (s / "hello.c").chmod(0),
        user=NOBODY,
    ),
    # -- the command line -------------------------------------------------------------------------
    "--config is a FIFO": Case(
        GOOD,
        3,
        r"{tmp}/cfg: config file is not a regular file",
        extra=("--config", "{tmp}/cfg"),
        setup=lambda s, r, t: os.mkfifo(r.parent / "cfg"),
        nothing_added=True,
    ),
    "--config /dev/zero": Case(
        GOOD,
        3,
        r"/dev/zero: config file is not a regular file",
        extra=("--config", "/dev/zero"),
        nothing_added=True,
    ),
    "--config of 2 MiB": Case(
        GOOD,
        3,
        r"{tmp}/cfg: 2097153 bytes: larger than any config file",
        extra=("--config", "{tmp}/cfg"),
        setup=lambda s, r, t: _big_file(r.parent / "cfg", (2 << 20) + 1),
        nothing_added=True,
    ),
    "add a dir that does not exist": Case(
        GOOD, 3, r"{root}/nonexistent/dir: no such directory", target="{root}/nonexistent/dir"
    ),
    # -- a state dir that cannot be written (issue 22: OSError(30), an internal error) ---------
    "add, state dir read-only": Case(
        GOOD,
        7,
        r"{root}/var/lib/extmod/\S+: Read-only file system",
        read_only_state=True,
        nothing_added=True,
    ),
    "install, state dir read-only": Case(
        GOOD,
        7,
        r"{root}/var/lib/extmod/\S+: Read-only file system",
        verb="install",
        read_only_state=True,
        nothing_added=True,
    ),
    # -- numbers --------------------------------------------------------------------------------
    # (issue 22: a jobserver pipe filled with 70000 tokens before any make read it hung
    # forever, after the package was added; 20 digits overflowed a C long)
    "-j 70000": Case(
        GOOD,
        3,
        r"--jobs: 70000 job slots: at most 4096",
        verb="install",
        extra=("-j", "70000"),
        nothing_added=True,
    ),
    "-j with 20 digits": Case(
        GOOD,
        3,
        r"--jobs: expected a whole number \(at most 18 digits\), got '9{{20}}'",
        verb="install",
        extra=("-j", "9" * 20),
        nothing_added=True,
    ),
    "EXTMOD_JOBS=70000": Case(
        GOOD,
        3,
        r"environment variable EXTMOD_JOBS: 70000 job slots",
        verb="install",
        env={"EXTMOD_JOBS": "70000"},
        nothing_added=True,
    ),
    "-j -1": Case(
        GOOD,
        3,
        r"--jobs: expected a whole number",
        verb="install",
        extra=("-j=-1",),
        nothing_added=True,
    ),
    # -- who runs it ------------------------------------------------------------------------------
    "non-root into the real root": Case(
        GOOD,
        7,
        r"extmod install changes /usr/src, "
        r"/lib/modules and /var/lib/extmod: run it as root, or "
        r"give --root DIR",
        verb="install-real",
        user=NOBODY,
    ),
    # -- damaged state (issue 22): every record kind, each damage, refused by file and field --
    "install record empty": _state_case(
        "status", _write(INSTALLED, b""), INSTALLED, r"damaged record: not JSON"
    ),
    "install record truncated": _state_case(
        "install hostile/1.0 -k KVER --force",
        _truncated(INSTALLED),
        INSTALLED,
        r"damaged record: not JSON",
    ),
    "install record a list": _state_case(
        "uninstall hostile -k KVER",
        _write(INSTALLED, b"[]"),
        INSTALLED,
        r"the record: expected an object, found a list",
    ),
    "install record files null": _state_case(
        "uninstall hostile -k KVER",
        _edit(INSTALLED, _set(["files"], None)),
        INSTALLED,
        r"files: expected a list, found null",
    ),
    "install record path escapes": _state_case(
        "uninstall hostile -k KVER",
        _edit(INSTALLED, _set(["files", 0, "path"], "../../../../etc/hostname")),
        INSTALLED,
        r"files\[0\]\.path: '\.\./\.\./\.\./\.\./etc/hostname' leads out of its tree",
    ),
    "install record path absolute": _state_case(
        "remove hostile --all",
        _edit(INSTALLED, _set(["files", 0, "path"], "/etc/hostname")),
        INSTALLED,
        r"files\[0\]\.path: '/etc/hostname' leads out of its tree",
    ),
    "install record without sha256": _state_case(
        "status",
        _edit(INSTALLED, lambda d: d["files"][0].pop("sha256")),
        INSTALLED,
        r"files\[0\]\.sha256: missing",
    ),
    "install record a symlink": _state_case(
        "status",
        _special(INSTALLED, lambda f: f.symlink_to("/etc/hostname")),
        INSTALLED,
        r"a symlink where a record belongs",
    ),
    "install record a FIFO": _state_case(
        "uninstall hostile -k KVER",
        _special(INSTALLED, lambda f: os.mkfifo(f)),
        INSTALLED,
        r"record is not a regular file",
    ),
    "build record a list": _state_case(
        "unbuild hostile/1.0 -k KVER",
        _write(BUILT, b"[]"),
        BUILT,
        r"the record: expected an object, found a list",
    ),
    "build record module escapes": _state_case(
        "install hostile/1.0 -k KVER",
        _edit(BUILT, _set(["modules", 0, "file"], "../../x.ko")),
        BUILT,
        r"modules\[0\]\.file: ",
    ),
    "build record truncated": _state_case(
        "status", _truncated(BUILT), BUILT, r"damaged record: not JSON"
    ),
    "registration empty": _state_case(
        "status", _write(ADDED, b""), ADDED, r"damaged record: not JSON"
    ),
    "registration not UTF-8": _state_case(
        "remove hostile --all", _write(ADDED, b"\xff\xfe{}"), ADDED, r"damaged record: not UTF-8"
    ),
    "registration source escapes": _state_case(
        "install hostile/1.0 -k KVER --force",
        _edit(ADDED, _set(["source"], "../../../../etc")),
        ADDED,
        r"source: ",
    ),
    "registration name a number": _state_case(
        "status",
        _edit(ADDED, _set(["name"], 5)),
        ADDED,
        r"name: expected a string, found a number",
    ),
    "registration a dir": _state_case(
        "status",
        _special(ADDED, lambda f: f.mkdir()),
        ADDED,
        r"record is not a regular file",
    ),
    "journal a symlink": _state_case(
        "install hostile/1.0 -k KVER",
        _journal_link,
        JOURNAL,
        r"a symlink where a record belongs",
    ),
    "journal garbage": _state_case(
        "status", _write(JOURNAL, b"garbage"), JOURNAL, r"damaged record: not JSON"
    ),
    "journal move escapes": _state_case(
        "install hostile/1.0 -k KVER --force",
        _write(
            JOURNAL,
            json.dumps(
                {
                    "op": "install",
                    "moves": [["../../../../etc/hostname", "updates/dkms/x.ko"]],
                    "record": {
                        "name": "hostile",
                        "version": "1.0",
                        "kernel": "{kver}",
                        "arch": "x86_64",
                        "created_dirs": [],
                        "files": [],
                        "withheld": [],
                    },
                }
            ).encode(),
        ),
        JOURNAL,
        r"moves\[0\]",
    ),
    # -- kernel releases that lead out of /lib/modules and the state tree (issue 22:
    # `kernel-prerm ../..` removed every package's build dir) -------------------------------
    "kernel-prerm ../..": Case(
        GOOD,
        3,
        r"KVER: '\.\./\.\.': a kernel release has no '/'",
        verb="raw",
        extra=("kernel-prerm", "../.."),
        damage=lambda state, kver: None,
    ),
    "-k of 300 characters": Case(
        GOOD,
        3,
        r"-k: 'k{{300}}': 300 bytes: a kernel release has at most 64",
        verb="raw",
        extra=("status", "-k", "k" * 300),
        damage=lambda state, kver: None,
    ),
}


def _mounted(script: str) -> list[str]:
    """An argv prefix: ``script`` (``$0``: the next word, a dir) run in a mount namespace of
    its own (nothing outside the command sees its mounts), then the command."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{script} && exec "$@"']


# the command with DIR a read-only bind mount of itself
_READ_ONLY = _mounted('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"')
# the command with / read-only but for DIR
_ONLY_WRITABLE = _mounted('mount --bind "$0" "$0" && mount -o remount,bind,ro /')


def test_doctor_says_the_state_dir_is_not_writable(trees: dict[str, Any], tmp_path: Path) -> None:
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    (root / "var/lib/extmod").mkdir(parents=True)
    wrap = [*_READ_ONLY, str(root / "var/lib/extmod")]
    r = extmod(["--root", root, "--json", "doctor"], wrap=wrap)
    assert r.rc == 7, r.out + r.err
    bad = [c for c in json.loads(r.out) if c["status"] == "FAIL"]
    assert [c["area"] for c in bad] == ["state"], bad
    assert f"{root}/var/lib/extmod is not writable (read-only file system)" in bad[0]["detail"]


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 80


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(
    name: str, trees: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    case = CASES[name]
    if case.user is not None:  # pytest's tmp dirs are 0700: the user needs its own
        tmp_path = request.getfixturevalue("user_dir")
    kver = trees["gcc"]["kver"]
    if case.damage is not None:
        root = _copy_root(request.getfixturevalue("installed_root"), tmp_path / "root", trees)
        case.damage(root / "var/lib/extmod", kver)
    else:
        root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
        (root / "var/lib").mkdir(parents=True)  # as on a system: only var/lib/extmod appears
    src = _source(case, tmp_path / "hostile-1.0", root, trees)
    conf = src / "dkms.conf"
    before_root, before_src = _outside_state(root), snapshot(src)
    before_state = _records(root) if case.damage else {}

    fill = {"root": str(root), "src": str(src), "tmp": str(tmp_path)}
    argv = _argv(case, fill, kver)
    # Everything but this test's own dir is read-only to extmod (issue 22: "nothing written
    # outside" was checked inside the root only): a write anywhere else fails the command.
    wrap = [*_ONLY_WRITABLE, str(tmp_path)]
    if case.read_only_state:
        (root / "var/lib/extmod").mkdir()
        wrap += [*_READ_ONLY, str(root / "var/lib/extmod")]
    r = extmod(argv, env=case.env, user=case.user, timeout=120, wrap=wrap)

    lines = r.err.strip().splitlines()
    assert r.rc == case.rc, (r.rc, r.err)
    assert len(lines) == 1, f"not one line: {r.err}"
    pattern = case.expect.format(
        **{k: re.escape(v) for k, v in {**fill, "conf": str(conf), "kver_re": kver}.items()}
    )
    assert re.fullmatch(r"extmod: error: " + pattern + r".*", lines[0]), lines[0]
    assert _outside_state(root) == before_root, "wrote outside the state dir"
    assert r.left_running() == [], "processes outlived extmod"
    assert snapshot(src) == before_src, "changed the source dir"
    if case.nothing_added:
        assert not (root / "var/lib/extmod/packages").exists(), "registered before refusing"
    if case.damage is not None:  # refused before it changed anything (locks may appear)
        assert _records(root) == before_state, "changed the damaged state tree"


def _source(case: Case, src: Path, root: Path, trees: dict[str, Any]) -> Path:
    """The package's source dir (examples/hello with the case's dkms.conf), the case's
    setup run, and root and source handed to the case's user, if any."""
    shutil.copytree(EXAMPLES / "hello", src)
    conf = src / "dkms.conf"
    if isinstance(case.conf, bytes):
        conf.write_bytes(case.conf)
    elif case.conf is not None:
        conf.write_text(case.conf)
    if case.setup:
        case.setup(src, root, trees)
    if case.user is not None:  # the user's own staging root and source dir
        for d in (root, src):
            for dirpath, dirnames, filenames in os.walk(d):
                for n in (*dirnames, *filenames):
                    os.chown(os.path.join(dirpath, n), case.user, case.user, follow_symlinks=False)
            os.chown(d, case.user, case.user)
    return src


@pytest.fixture(scope="module")
def installed_root(trees: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with hostile/1.0 added, built and installed for the gcc kernel, copied by
    every damaged-state case (one build for all of them)."""
    base = tmp_path_factory.mktemp("installed")
    root = make_root(base / "root", trees["gcc"]["kver"], trees["gcc"]["build"])
    src = base / "hostile-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(GOOD)
    r = extmod(["-q", "--root", root, "install", src, "-k", trees["gcc"]["kver"]])
    assert r.rc == 0, r.err
    shutil.rmtree(root / "var/lib/extmod/locks")
    return root


def _copy_root(template: Path, root: Path, trees: dict[str, Any]) -> Path:
    shutil.copytree(template, root, symlinks=True)
    link = root / "lib/modules" / trees["gcc"]["kver"] / "build"
    link.unlink()
    link.symlink_to(os.path.relpath(trees["gcc"]["build"], link.parent))
    return root


# What a refused command may still write in the state dir: its locks, and the caches a
# command refreshes before it reads records (files.read_cache's kind: never a record; the
# kept build dirs under build/ hold the dkms.conf memo and the sync manifest).
_NOT_RECORDS = {"locks", "build", "source-index.json", "compilers.json"}


def _records(root: Path) -> dict[str, bytes]:
    """Every record file of the state dir (path -> content; a FIFO or link as its kind)."""
    state = root / "var/lib/extmod"
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(state):
        dirnames[:] = [d for d in dirnames if d not in _NOT_RECORDS]
        for n in filenames:
            if n in _NOT_RECORDS:
                continue
            f = Path(dirpath) / n
            rel = str(f.relative_to(state))
            out[rel] = (
                b"link:" + os.readlink(f).encode()
                if f.is_symlink()
                else f.read_bytes()
                if f.is_file()
                else b"special"
            )
    return out


def _argv(case: Case, fill: dict[str, str], kver: str) -> list[str | Path]:
    root, src = fill["root"], fill["src"]
    if case.verb == "raw":
        return ["-q", "--root", root, *(x.replace("{kver}", kver) for x in case.extra)]
    what = case.target.format(**fill) if case.target else src
    extra = [x.format(**fill) for x in case.extra]
    if case.verb == "add":
        return ["-q", "--root", root, "add", what, *extra]
    if case.verb == "install":
        return ["-q", "--root", root, "install", what, "-k", kver, *extra]
    return ["-q", "install", src, "-k", kver, *extra]  # into the real root: no --root


def _outside_state(root: Path) -> str:
    """A digest of the whole root but var/lib/extmod (locks, keys, builds may go there)."""
    state = root / "var/lib/extmod"
    keep = root.parent / f"{root.name}.outside-state"
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(
        root,
        keep,
        symlinks=True,
        ignore=lambda d, names: [n for n in names if Path(d) / n == state],
    )
    try:
        return snapshot(keep)
    finally:
        shutil.rmtree(keep)


def test_a_failing_package_script_has_its_own_exit_code(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 22: POST_ADD failing exited 6, "the module build failed"; it is exit 12, one
    line naming the script, the package and the log."""
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    src = tmp_path / "hostile-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(GOOD + 'POST_ADD="fail.sh"\n')
    (src / "fail.sh").write_text("#!/bin/sh\necho about to fail\nexit 3\n")
    (src / "fail.sh").chmod(0o755)
    r = extmod(["-q", "--root", root, "add", src])
    lines = r.err.strip().splitlines()
    assert r.rc == 12, r.err
    log = root / "var/lib/extmod/packages/hostile/1.0/hooks.log"
    assert lines == [
        f"extmod: error: POST_ADD script of hostile/1.0 failed with exit 3 (log: {log})"
    ], lines
    assert "about to fail" in log.read_text()


def test_the_confinement_catches_a_write_outside(tmp_path: Path) -> None:
    """The control for the corpus's confinement: a write outside the test's dir fails, a
    write inside works, and a process left behind in the session is found."""
    probe = Path("/var/tmp") / f"extmod-hostile-probe-{os.getpid()}"
    script = f"touch {tmp_path}/inside && touch {probe}"
    r = subprocess.run([*_ONLY_WRITABLE, str(tmp_path), "sh", "-c", script], capture_output=True)
    assert r.returncode != 0 and b"Read-only file system" in r.stderr
    assert (tmp_path / "inside").exists() and not probe.exists()

    from conftest import Ran

    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert Ran(0, "", "", sleeper.pid).left_running() != []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_install_whose_registration_is_gone_is_named_and_can_be_uninstalled(
    trees: dict[str, Any], installed_root: Path, tmp_path: Path
) -> None:
    """Issue 22, damaged state: with the package's registration deleted by hand, its module
    stayed installed while status showed nothing and uninstall said "not added". Now status
    and doctor name it, and uninstall removes it from its install record alone."""
    kver = trees["gcc"]["kver"]
    root = _copy_root(installed_root, tmp_path / "root", trees)
    shutil.rmtree(root / "var/lib/extmod/packages/hostile")
    ko = root / "lib/modules" / kver / "updates/dkms/hello.ko"
    assert ko.is_file()
    r = extmod(["--root", root, "status"])
    assert r.rc == 0 and r.out.strip() == (
        f"hostile/1.0, {kver}, x86_64: installed (not added any more: "
        f"extmod uninstall hostile/1.0 -k {kver} removes it)"
    ), r.out + r.err
    r = extmod(["--root", root, "--json", "doctor", "-k", kver])
    assert any(
        c["area"] == "state" and "hostile/1.0 is installed but not added" in c["detail"]
        for c in json.loads(r.out)
    ), r.out
    r = extmod(["-q", "--root", root, "unbuild", "hostile", "-k", kver])
    assert r.rc == 3 and "hostile: not added" in r.err, r.err  # nothing built to unbuild
    r = extmod(["-q", "--root", root, "uninstall", "hostile", "-k", kver])
    assert r.rc == 0, r.err
    assert not ko.exists() and not (root / "var/lib/extmod/installed" / kver).exists()
    assert extmod(["--root", root, "status"]).out == ""


def test_a_link_out_of_the_source_tree_is_kept_as_a_link_and_never_read(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """Debian 13's iptables-netflow-dkms ships /usr/src/ipt-netflow-2.6/README.gz ->
    /usr/share/doc/…, which exists wherever docs are installed: extmod refused to add it
    (issue 21, found by the Debian 13 parity run). A link out of the tree is now kept as a
    link in /usr/src and in the build tree, as DKMS's ``cp -a`` keeps it, and never
    followed or read: links to a FIFO and to / cost nothing, and nothing is copied from
    behind them."""
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    src = tmp_path / "hostile-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(GOOD)
    doc = tmp_path / "doc"
    doc.mkdir()
    (doc / "README.gz").write_text("doc\n")
    os.mkfifo(tmp_path / "fifo")
    links = {"README.gz": str(doc / "README.gz"), "pipe": str(tmp_path / "fifo"), "up": "/"}
    for name, target in links.items():
        (src / name).symlink_to(target)
    r = extmod(["-q", "--root", root, "install", src, "-k", kver], timeout=300)
    assert r.rc == 0, r.err
    copy = root / "usr/src/hostile-1.0"
    tree = root / "var/lib/extmod/build/hostile/1.0" / kver / "dkms/hostile/1.0/build"
    for where in (copy, tree):
        for name, target in links.items():
            assert (where / name).is_symlink() and os.readlink(where / name) == target, where
    assert (root / "lib/modules" / kver / "updates/dkms/hello.ko").is_file()
    # the digest covers the link, not what is behind it: a change there rebuilds nothing
    (doc / "README.gz").write_text("changed\n")
    r = extmod(["--root", root, "install", "hostile/1.0", "-k", kver])
    assert r.rc == 0 and "up to date" in r.out and "built" not in r.out, r.out + r.err


def test_a_crlf_dkms_conf_reads_as_its_lf_twin(trees: dict[str, Any], tmp_path: Path) -> None:
    """A dkms.conf with CRLF line ends (a DOS file) was refused; DKMS 3.2 drops one trailing
    CR of each value (safe_source's ``%$CR``), and the package builds and installs
    (run_test.sh's dkms_crlf_test). extmod reads it so: the same values as the LF file."""
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    src = tmp_path / "hostile-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    conf = GOOD + 'MAKE[0]="make -C ${kernel_source_dir} M=${dkms_tree}/hostile/1.0/build"\n'
    (src / "dkms.conf").write_bytes(conf.replace("\n", "\r\n").encode())
    r = extmod(["--root", root, "--json", "install", src, "-k", kver])
    assert r.rc == 0, r.err
    assert (root / "lib/modules" / kver / "updates/dkms/hello.ko").is_file()
    st = extmod(["--root", root, "status"])
    assert st.out.strip() == f"hostile/1.0, {kver}, x86_64: installed", st.out
    record = json.loads(r.out)["outcomes"]
    assert [o["ident"] for o in record] == ["hostile/1.0"] * len(record)
    assert "\r" not in r.out


def test_a_source_dir_given_again_restores_a_deleted_copy(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """An added package whose copy in /usr/src was deleted by hand, then ``dkms build`` of
    its source dir (DKMS 3.2.2's run_test.sh does so): the copy is made again and the
    package builds, as extmod's own ``install SRC`` does (it was an internal error)."""
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    src = tmp_path / "hostile-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "dkms.conf").write_text(GOOD)
    assert dkms(root, "add", str(src)).returncode == 0
    shutil.rmtree(root / "usr/src/hostile-1.0")
    r = dkms(root, "build", str(src), "-k", kver)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "internal error" not in r.stderr
    assert snapshot(root / "usr/src/hostile-1.0") == snapshot(src)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Creating symlink ") and lines[1] == "", lines
    st = extmod(["--root", root, "status"])
    assert st.out.strip() == f"hostile/1.0, {kver}, x86_64: built", st.out
