"""extmod's dkms.conf evaluation against Debian's dkms 3.0.10 itself, shape by shape.

DKMS's directive semantics are whatever its ``safe_source`` does: it sources the file in a
subshell, prints each directive with an unquoted ``eval echo`` and sources that output
again in read_conf's scope. This test takes ``safe_source`` (and the few helpers it calls,
and the ``dkms_conf_variables`` list) out of the real ``/usr/sbin/dkms`` of Debian's
package at run time, drives it as ``read_conf`` does (unset, then dkms.conf and each
override file that exists), and compares every directive it yields with what
``package.evaluate`` yields for the same files and variables. Nothing of DKMS is copied
into this repository; the shapes are those found in the archive's dkms.conf files.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from extmod.source import package, scripts

# It reads Debian's real dkms, which scripts/testtrees.py fetches: not a fast test.
pytestmark = pytest.mark.slow

KVER = "6.1.0-56-amd64"

# name -> (dkms.conf, {override file name: text})
SHAPES: dict[str, tuple[str, dict[str, str]]] = {
    # zfs-dkms 2.1: PRE_BUILD, POST_BUILD and STRIP spread over lines.
    "multi-line values": (
        'PRE_BUILD="configure\n  --prefix=/usr\n  --with-config=kernel\n'
        "  --with-linux=$(\n    case ${kernel_source_dir} in\n"
        "      */build) echo ${kernel_source_dir/%build/source} ;;\n"
        "      *) echo ${kernel_source_dir} ;;\n    esac\n  )\n"
        '  --with-linux-obj=${kernel_source_dir}\n"\n'
        'MAKE[0]="make -C ${kernel_source_dir}\n   M=${dkms_tree}/${PACKAGE_NAME}/build\n'
        '   modules"\nSTRIP[0]="$(\n  [[ -r ${kernel_source_dir}/.config ]] && echo no\n)"\n',
        {},
    ),
    "continuation backslashes": (
        'MAKE[0]="make -C $kernel_source_dir \\\n    M=$dkms_tree/$module/$module_version/build '
        '\\\n    KVER=$kernelver"\n',
        {},
    ),
    "late variables in single quotes": (
        "BDIR=/somewhere\nMAKE[0]='make -C ${kernel_source_dir} M=${BDIR}/x "
        "KVER=$kernelver ARCH=$arch J=$parallel_jobs'\n",
        {},
    ),
    "command substitution and pattern substitution": (
        'VER=$(echo $kernelver | sed -ne "s/\\([0-9]\\+\\)\\..*/\\1/p")\n'
        'MAKE[0]="make KV=$VER SRC=${kernel_source_dir/%build/source}"\n'
        "CLEAN='make clean KV=$(echo $kernelver | cut -d. -f1)'\n",
        {},
    ),
    "arrays with gaps": (
        "BUILT_MODULE_NAME[0]=a\nBUILT_MODULE_NAME[3]=d\nDEST_MODULE_LOCATION[0]=/extra\n"
        "DEST_MODULE_LOCATION[3]=/updates\nSTRIP[7]=no\n",
        {},
    ),
    "loop over modules": (
        'i=0\nfor m in one two "three four"; do\n  BUILT_MODULE_NAME[$i]=$m\n'
        '  DEST_MODULE_LOCATION[$i]="/extra/$m"\n  i=$((i+1))\ndone\n',
        {},
    ),
    "runs of blanks and tabs": ('MAKE[0]="make\t\t-C   /x      M=/y"\n', {}),
    "double quotes inside a value": (
        'MAKE[0]=\'make CFLAGS="-DA -DB" all\'\nCLEAN="make clean"\n',
        {},
    ),
    "override files re-read earlier values": (
        "MAKE[0]='make A=$kernelver'\nEXTRA=gone\n",
        {
            "pkg.conf": 'MAKE[1]="make B=${EXTRA}"\nPOST_BUILD="post $module_version"\n',
            f"pkg-1.0-{KVER}.conf": "CLEAN='make C=$arch'\n",
        },
    ),
    "a newline quoted with $'...'": ("MAKE[0]=$'make\\nall'\nBUILT_MODULE_NAME[0]=$'a\\nb'\n", {}),
    "an associative array with a word index": (
        'declare -A BUILT_MODULE_NAME\nBUILT_MODULE_NAME[x]="a"\n',
        {},
    ),
    "globs in values": ("MAKE[0]='make SRCS=*.c'\n", {}),
    "directives named late, in DKMS's order": (
        "CLEAN='make clean N=${PACKAGE_NAME}'\nMAKE[0]='make N=${PACKAGE_NAME} "
        "V=${PACKAGE_VERSION} L=${BUILT_MODULE_NAME[0]}'\nBUILT_MODULE_NAME[0]=m\n",
        {"pkg.conf": "POST_ADD='add ${CLEAN}'\n"},
    ),
}


def _dkms_read_conf(
    dkms: Path, conf: Path, overrides: list[Path], values: dict[str, str]
) -> dict[str, dict[int, str]]:
    """Directives as Debian's dkms reads them: its own safe_source, driven as read_conf."""
    text = dkms.read_text()
    parts = [re.search(r'^readonly dkms_conf_variables="[^"]*"$', text, re.M)]
    for fn in ("error", "warn", "deprecated", "die", "mktemp_or_die", "safe_source"):
        parts.append(re.search(rf"^{fn}\(\) *[{{(]\n.*?^[}})]$", text, re.M | re.S))
    assert all(parts), "dkms 3.0.10's safe_source or its helpers not found"
    lib = "\n".join(m.group(0) for m in parts if m)
    driver = (
        lib
        + "\n"
        + scripts.define_vars(values)
        + r"""
for var in $dkms_conf_variables; do unset $var; done
for f in "$@"; do [ -e "$f" ] && safe_source "$f" $dkms_conf_variables; done
for d in $dkms_conf_variables; do
  declare -p "$d" >/dev/null 2>&1 || continue
  eval "idx=(\"\${!$d[@]}\")"
  for i in "${idx[@]}"; do eval "printf '%s\0%s\0%s\0' \"\$d\" \"\$i\" \"\${$d[$i]}\""; done
done
"""
    )
    res = subprocess.run(
        ["bash", "-c", driver, "dkms", str(conf), *map(str, overrides)],
        capture_output=True,
        cwd=conf.parent,
        check=True,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )
    fields = res.stdout.split(b"\0")
    out: dict[str, dict[int, str]] = {}
    for i in range(0, len(fields) - 2, 3):
        key, idx, value = (f.decode() for f in fields[i : i + 3])
        if key in package._ALL:  # lower-case ones are DKMS's own derived arrays
            out.setdefault(key, {})[int(idx)] = value
    return out


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_directives_are_what_dkms_3_0_10_reads(
    trees: dict[str, Any], tmp_path: Path, shape: str
) -> None:
    body, override_texts = SHAPES[shape]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.c").write_text("")
    (src / "b.c").write_text("")
    conf = src / "dkms.conf"
    conf.write_text('PACKAGE_NAME="pkg"\nPACKAGE_VERSION="1.0"\n' + body)
    etc = tmp_path / "etc-dkms"
    etc.mkdir()
    for name, text in override_texts.items():
        (etc / name).write_text(text)
    ksrc = tmp_path / "lib/modules" / KVER / "build"
    ksrc.mkdir(parents=True)
    (ksrc / ".config").write_text("CONFIG_X=y\n")
    target = package.ConfKernel(
        kver=KVER, arch="x86_64", kernel_source_dir=ksrc, kernel_config={}, version=(6, 1, 0)
    )
    ctx = package.Context(
        dkms_tree=tmp_path / "dkms",
        source_tree=tmp_path / "usr/src",
        install_tree=tmp_path / "lib/modules",
        etc_dkms=etc,
        jobs=3,
    )
    ours = package.evaluate(conf, target, ctx, "pkg", "1.0")
    values = package.shell_vars(target, ctx, "pkg", "1.0")
    files = [
        etc / "pkg.conf",
        etc / "pkg-1.0.conf",
        etc / f"pkg-1.0-{KVER}.conf",
        etc / f"pkg-1.0-{KVER}-x86_64.conf",
    ]
    theirs = _dkms_read_conf(Path(trees["dkms"]["dkms"]), conf, files, values)
    assert ours == theirs
    assert ours  # the shape set something


def test_multi_line_make_is_one_command_line(tmp_path: Path) -> None:
    """The issue's damaging case: a MAKE over two lines is one make, never a bare
    ``make -C <kernel tree>`` followed by a second command."""
    src = tmp_path / "src"
    src.mkdir()
    conf = src / "dkms.conf"
    conf.write_text(
        'PACKAGE_NAME="pkg"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]=m\n'
        "DEST_MODULE_LOCATION[0]=/extra\n"
        'MAKE[0]="make -C ${kernel_source_dir}\n  M=${dkms_tree}/x modules"\n'
        'PRE_BUILD="configure\n  --with-linux=${kernel_source_dir/%build/source}"\n'
    )
    ksrc = Path("/lib/modules") / KVER / "build"
    target = package.ConfKernel(
        kver=KVER, arch="x86_64", kernel_source_dir=ksrc, kernel_config={}, version=(6, 1, 0)
    )
    ctx = package.Context(
        dkms_tree=Path("/dkms"),
        source_tree=tmp_path,
        install_tree=Path("/lib/modules"),
        etc_dkms=tmp_path / "etc",
    )
    pkg = package.load(src, target, ctx)
    assert pkg.make == f"make -C {ksrc} M=/dkms/x modules"
    assert pkg.pre_build == f"configure --with-linux=/lib/modules/{KVER}/source"


PROBED = [
    "kernelver",
    "arch",
    "kernel_source_dir",
    "kernel_config",
    "dkms_tree",
    "source_tree",
    "install_tree",
    "tmp_location",
    "module",
    "module_version",
    "parallel_jobs",
]


def test_the_variables_a_dkms_conf_sees_are_what_dkms_sets(
    trees: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22: the values of DKMS's variables come from DKMS itself, not from extmod's
    shell_vars on both sides. A probe dkms.conf writes what it sees into a file while
    Debian's real dkms (3.0.10) reads it for ``dkms add -k KVER`` in private trees; extmod's
    shell_vars for the same trees, kernel and job count must give the same values."""
    src_tree, dkms_tree, install_tree = tmp_path / "src", tmp_path / "dkms", tmp_path / "lib"
    for d in (src_tree, dkms_tree, install_tree):
        d.mkdir()
    probe_out = tmp_path / "seen"
    src = src_tree / "probe-1.0"
    src.mkdir()
    lines = " ".join(f'"{v}=${{{v}}}"' for v in PROBED)
    (src / "dkms.conf").write_text(
        'PACKAGE_NAME="probe"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="probe"\n'
        'DEST_MODULE_LOCATION[0]="/extra"\n'
        f"printf '%s\\n' {lines} > {probe_out}\n"
    )
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TMPDIR": str(tmp_path)}
    res = subprocess.run(
        [
            "bash",
            trees["dkms"]["dkms"],
            "add",
            "-m",
            "probe",
            "-v",
            "1.0",
            "-k",
            KVER,
            "-j",
            "3",
            f"--dkmstree={dkms_tree}",
            f"--sourcetree={src_tree}",
            f"--installtree={install_tree}",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert probe_out.exists(), res.stdout + res.stderr
    theirs = dict(line.split("=", 1) for line in probe_out.read_text().splitlines())
    assert theirs["kernelver"] == KVER and theirs["module"] == "probe", theirs  # it probed

    target = package.ConfKernel(
        kver=KVER,
        arch="x86_64",
        kernel_source_dir=Path("/lib/modules") / KVER / "build",
        kernel_config={},
        version=(6, 1, 0),
    )
    ctx = package.Context(
        dkms_tree=dkms_tree,
        source_tree=src_tree,
        install_tree=install_tree,
        etc_dkms=tmp_path / "etc",
        jobs=3,
    )
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    ours = package.shell_vars(target, ctx, "probe", "1.0")
    assert {v: ours[v] for v in PROBED} == {v: theirs[v] for v in PROBED}
