"""DKMS's own test suite, ``run_test.sh``, against extmod's ``dkms`` (issues 33 and 35).

The suite is taken from Debian's ``dkms`` source package of the release being matched
(``apt-get source dkms`` in a chroot of that release, with the chroot's own sources as
``deb-src``): 3.2.2 in a Debian 13 chroot, 3.0.10 in a Debian 12 one. extmod's .deb is
installed there in dkms's place (answering as that release, ``[dkms] version``), with the
release's kernel headers, and the suite runs as root, as upstream's CI runs it.

As shipped, the suite stops at its first difference (``set -e``). To count every check,
``keep_going`` rewrites the copy it runs, and only that: each check of its helpers
(``run_with_expected_error``, ``run_with_expected_output``, ``run_status_with_expected_output``,
``check_make_log_content``) records PASS or FAIL with the title the suite echoed before
it and the command, and returns 0; each ``exit 1`` of the suite's inline checks records
FAIL and goes on. The diff of a failed check is kept with it. Nothing else of the suite is
changed.

``python tests/dkms_suite.py RELEASE WORKDIR``: a run by hand (RELEASE 13 or 12), the counts
printed, the checks as JSON in WORKDIR/checks.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chroot import Chroot

# The dkms each Debian release ships, and the base system of its chroot (testtrees.py).
RELEASES = {
    "13": {"dkms": "3.2.2", "base": "chroot13"},
    "12": {"dkms": "3.0.10", "base": "chroot"},
}
HELPERS = (
    "run_with_expected_error",
    "run_with_expected_output",
    "run_status_with_expected_output",
    "check_make_log_content",
)
RESULTS = "/tmp/run_test.results"

# Recorded before each of the suite's own lines runs (bash, prepended to the copy).
_PROLOGUE = f"""
__title=''
__n=0
__t() {{ __title="$1"; echo "$1"; }}
__record() {{ # RESULT KIND ARGS...
    local result=$1 kind=$2
    shift 2
    __n=$((__n + 1))
    local what="$*"
    printf '%s\\t%s\\t%s\\t%s\\t%s\\n' "$__n" "$result" "$kind" "$__title" \\
        "${{what//$'\\n'/ }}" >> {RESULTS}
    if [[ $result = FAIL && -f test_cmd_diff.log ]]; then
        sed 's/^/    /' test_cmd_diff.log | head -n 60 >> {RESULTS}
        rm -f test_cmd_diff.log
    fi
}}
"""


@dataclass(frozen=True)
class Check:
    n: int
    result: str  # PASS or FAIL
    kind: str  # the helper, or "inline" (one of the suite's own `exit 1` checks)
    title: str  # the line the suite echoed before it
    command: str
    diff: str = ""


def keep_going(script: str) -> str:
    """The suite with every check recorded and none stopping it (the module's docstring)."""
    lines = script.splitlines()
    assert lines[2] == "set -eu", lines[:3]  # as both releases ship it
    out = [*lines[:2], "set -u", _PROLOGUE]
    in_helper, start = "", 0
    for line in lines[3:]:
        if m := re.match(r"^(\w+)\(\) *\{?$", line):
            in_helper = m.group(1) if m.group(1) in HELPERS else ""
            start = len(out)
        if in_helper:
            if line.strip() == "return 1":
                indent = line[: len(line) - len(line.lstrip())]
                line = f'{indent}__record FAIL {in_helper} "$@"; return 0'
            elif re.match(r"^\s*if ! diff -U3 ", line):
                # the diff is kept beside the check (and still printed)
                line = line.replace(" ; then", " | tee test_cmd_diff.log ; then", 1)
            elif re.match(r"""^\s*echo "Error: (command|dkms status)""", line):
                line += " | tee test_cmd_diff.log"  # a status that differs, and the output
            elif re.match(r"""^\s*cat "?(\$\{output_log\}|test_cmd_output\.log)"?$""", line):
                line += " | tee -a test_cmd_diff.log"
            elif line == "}":
                if any("__record FAIL" in x for x in out[start:]):  # a check of its own
                    line = f'    __record PASS {in_helper} "$@"\n}}'
                in_helper = ""
        elif "exit 1" in line and "tmpdir" not in line and "os-release" not in line:
            line = line.replace("exit 1", f'__record FAIL inline "{_quoted(line)}"')
        if m := re.match(r"^(\s*)echo '([^']*)'$", line):
            line = f"{m.group(1)}__t '{m.group(2)}'"
        out.append(line)
    out.insert(3, "set -o pipefail")  # a failed diff's status, through the tee
    return "\n".join(out) + "\n"


def _quoted(line: str) -> str:
    return line.strip().replace('"', "'").replace("$", "\\$").replace("`", "'")[:120]


def parse(text: str) -> list[Check]:
    checks: list[Check] = []
    for line in text.splitlines():
        if not re.match(r"\d+\t", line) and checks:
            last = checks[-1]
            checks[-1] = Check(
                **{**asdict(last), "diff": last.diff + line.removeprefix("    ") + "\n"}
            )
            continue
        n, result, kind, title, command = [*line.split("\t"), "", "", "", ""][:5]
        checks.append(Check(int(n), result, kind, title, command))
    return checks


def prepare(c: Chroot, release: str, deb: Path) -> str:
    """extmod's .deb, the release's kernel headers and Debian's dkms source in chroot
    ``c``; the kernel release the suite builds for."""
    want = RELEASES[release]["dkms"]
    (c.root / "tmp/extmod.deb").write_bytes(deb.read_bytes())
    c.apt("install /tmp/extmod.deb")
    if release == "12":
        conf = c.root / "etc/extmod/config.toml"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text('[dkms]\nversion = "3.0.10"\n')
    c.apt("install linux-headers-amd64 dpkg-dev kmod openssl")
    # Debian's source package, from the chroot's own sources as deb-src: apt verifies the
    # Sources index, apt-helper each file's SHA256 against it. The mirror holds the
    # upstream tarball and Debian's debian.tar.xz, not always the .dsc, so the tree is
    # unpacked as dpkg-source would (format 3.0 (quilt)): the tarball, debian/ over it,
    # then debian/patches in series order.
    c.run(
        "for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do "
        '[ -f "$f" ] && sed -n \'s/^deb /deb-src /p\' "$f"; done '
        "> /etc/apt/sources.list.d/extmod-src.list\n"
        f"{_APT_QUIET} update >/dev/null\n"
        "mkdir -p /root/src && cd /root/src\n"
        f"{_APT_QUIET} source --print-uris dkms | grep -v '\\.dsc' | "
        "sed -n \"s/^'\\(.*\\)' \\([^ ]*\\) [0-9]* \\(SHA256:[0-9a-f]*\\)$/\\1 \\2 \\3/p\" |"
        " while read -r uri file sum; do"
        ' /usr/lib/apt/apt-helper download-file "$uri" "$file" "$sum" >/dev/null; done\n'
        f"mkdir dkms-{want} && tar -xf dkms_{want}.orig.tar.* -C dkms-{want} "
        "--strip-components=1\n"
        f"tar -xf dkms_{want}-*.debian.tar.* -C dkms-{want}\n"
        f"cd dkms-{want} && if [ -f debian/patches/series ]; then"
        " grep -v '^#' debian/patches/series | while read -r patch _; do"
        ' [ -n "$patch" ] && patch -s -p1 < "debian/patches/$patch"; done; fi'
    )
    got = source_dir(c).name
    assert got == f"dkms-{want}", f"the release's dkms source is {got}, not dkms-{want}"
    assert (source_dir(c) / "run_test.sh").is_file(), "no run_test.sh in Debian's source"
    kvers = sorted(p.parent.name for p in (c.root / "lib/modules").glob("*/build"))
    assert len(kvers) == 1, kvers
    return kvers[0]


_APT_QUIET = "apt-get -y -q -o Dpkg::Use-Pty=0"


def source_dir(c: Chroot) -> Path:
    (src,) = [p for p in (c.root / "root/src").glob("dkms-*") if p.is_dir()]
    return src


def run(c: Chroot, kver: str, timeout: int = 3600) -> tuple[list[Check], str]:
    """The whole suite, kept going; its checks and its output."""
    src = source_dir(c)
    (src / "run_test.extmod.sh").write_text(keep_going((src / "run_test.sh").read_text()))
    inside = "/" + str(src.relative_to(c.root))
    c.run(f"rm -f {RESULTS}")
    out = c.run(
        f'cd {inside} && KERNEL_VER={kver} bash ./run_test.extmod.sh 2>&1; echo "rc=$?"',
        timeout=timeout,
    )
    results = c.root / RESULTS.lstrip("/")
    text = results.read_text() if results.exists() else ""
    (c.root.parent / "run_test.results").write_text(text)
    return parse(text), out


def ids(checks: list[Check], kver: str) -> list[tuple[str, Check]]:
    """Each check named as the list of known failures names it (``KNOWN``): its title and
    command, the kernel and the suite's temp dirs written alike, and its occurrence when
    the same title and command come again."""
    seen: dict[str, int] = {}
    out = []
    for c in checks:
        text = re.sub(r"/tmp/tmp\.\w+", "/tmp/TMP", f"{c.title.strip()} | {c.command}")
        text = text.replace(kver, "KVER")
        seen[text] = seen.get(text, 0) + 1
        out.append((f"{text} #{seen[text]}" if seen[text] > 1 else text, c))
    return out


# The checks of each release's suite that fail on purpose or are not matched yet, each with
# its reason (docs/reference/dkms.md lists them): {"reasons": {KEY: text}, "failing":
# {ID: KEY}}.
KNOWN = {"13": Path(__file__).with_name("dkms_suite-13.json")}


def compare(checks: list[Check], kver: str, known: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(checks failing that the list does not name, checks the list names that pass now)."""
    failing = known["failing"]
    named = ids(checks, kver)
    new = [i for i, c in named if c.result == "FAIL" and i not in failing]
    fixed = [i for i, c in named if c.result == "PASS" and i in failing]
    gone = sorted(set(failing) - {i for i, _ in named})
    return new, fixed + [f"{i} (not run)" for i in gone]


def counts(checks: list[Check]) -> dict[str, int]:
    helpers = [c for c in checks if c.kind != "inline"]
    return {
        "checks": len(helpers),
        "passed": sum(c.result == "PASS" for c in helpers),
        "failed": sum(c.result == "FAIL" for c in helpers),
        "inline_failures": sum(c.kind == "inline" for c in checks),
    }


def private_archives(shared: Path, mine: Path) -> Path:
    """A download dir of this run's own, holding (as hard links, else copies) what the
    shared one holds: apt does not wait for the lock of a download dir, and the lane jobs
    beside this one (a README command in a chroot among them) use the shared one."""
    (mine / "partial").mkdir(parents=True, exist_ok=True)
    for deb in shared.glob("*.deb"):
        try:
            os.link(deb, mine / deb.name)
        except OSError:
            shutil.copyfile(deb, mine / deb.name)
    return mine


def main(argv: list[str]) -> int:
    release, work = argv[0], Path(argv[1])
    trees: dict[str, Any] = json.loads(Path("/var/cache/extmod-tests/trees.json").read_text())
    deb = Path(argv[2])
    c = Chroot(trees, work / "root", RELEASES[release]["base"])
    c.archives = private_archives(c.archives, work / "archives")
    try:
        kver = prepare(c, release, deb)
        (work / "kver").write_text(kver + "\n")
        checks, out = run(c, kver)
        (work / "output.log").write_text(out)
        (work / "checks.json").write_text(json.dumps([asdict(x) for x in checks], indent=1))
        print(json.dumps(counts(checks)))
    finally:
        c.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
