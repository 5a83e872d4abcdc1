"""The same DKMS command lines against Debian's dkms 3.0.10 and extmod's ``dkms``, in twin
trees (issue 12): exit codes and ``status`` output side by side.

Each tool runs every line in the mount namespace of the parity test (a tmpfs /lib/modules
holding KVER/build, tmpfs over /var/lib/dkms and /etc/dkms), with ``--dkmstree``,
``--sourcetree`` and ``--installtree`` naming its own twin under ``work``. The lines are
those of dh_dkms's postinst (``common.postinst``) and prerm, of Debian's kernel prerm.d
hook, and the everyday ones of a person; tarballs made by each tool are loaded by the
other. Usable as a script: ``python tests/conformance.py WORKDIR [dkms|dkms13]`` prints the table.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import parity

REPO = Path(__file__).resolve().parent.parent

# (command line with {K} for the kernel, {IN} for the dir of packages to add by path,
# {T} for the tarball dir; what the line stands for)
LINES: tuple[tuple[str, str], ...] = (
    ("status", "nothing added"),
    ("add -m vpoll -v 0.1", "common.postinst: add from /usr/src"),
    ("add -m vpoll -v 0.1", "add again"),
    ("status", ""),
    ("status -m vpoll -v 0.1 -k {K}", "common.postinst: status before build"),
    ("build -m vpoll -v 0.1 -k {K}", "common.postinst: build"),
    ("status -m vpoll -v 0.1 -k {K}", ""),
    ("build vpoll/0.1 -k {K}", "build again: skipped"),
    ("install -m vpoll -v 0.1 -k {K}", "common.postinst: install"),
    ("status -m vpoll -v 0.1 -k {K} -a x86_64", ""),
    ("status -k {K}", "kernel prerm.d hook"),
    ("install vpoll/0.1 -k {K}", "install again: skipped"),
    ("kernel_preinst -k {K}", "kernel preinst.d hook: unbuild AUTOINSTALL (3.1.6)"),
    ("status", ""),
    ("install vpoll/0.1 -k {K}", ""),
    ("status -m vpoll", ""),
    ("uninstall -m vpoll -v 0.1 -k {K}", ""),
    ("status", ""),
    ("uninstall -m vpoll -v 0.1 -k {K}", "uninstall again: skipped"),
    ("unbuild vpoll/0.1 -k {K}", ""),
    ("status -m vpoll -v 0.1", "dh_dkms prerm"),
    ("remove -m vpoll -v 0.1 --all", "dh_dkms prerm"),
    ("status", ""),
    ("remove -m vpoll -v 0.1 --all", "remove what is not added"),
    ("install -m vpoll -v 0.1 -k {K}", "install adds and builds"),
    ("status", ""),
    ("remove vpoll/0.1 -k {K}", "remove for one kernel"),
    ("status", ""),
    ("add {IN}/acpi-call-1.2.2", "add a source dir"),
    ("autoinstall -k {K}", ""),
    ("status", ""),
    ("mktarball acpi-call/1.2.2 -k {K} --archive={T}/mine.dkms.tar.gz", ""),
    ("mktarball acpi-call/1.2.2 -k {K} --binaries-only --archive={T}/bin.dkms.tar.gz", ""),
    ("remove acpi-call/1.2.2 --all", ""),
    ("ldtarball --archive {T}/mine.dkms.tar.gz", "load own tarball: source and modules"),
    ("status", ""),
    ("install acpi-call/1.2.2 -k {K}", "install the loaded build"),
    ("status", ""),
    ("remove acpi-call/1.2.2 --all", ""),
    ("ldtarball {OTHER}/mine.dkms.tar.gz", "load the OTHER tool's tarball"),
    ("status", ""),
    ("remove acpi-call/1.2.2 --all", ""),
    ("ldtarball --archive {OTHER}/bin.dkms.tar.gz", "the other's binaries-only tarball"),
    ("status", ""),
    ("install acpi-call/1.2.2 -k {K}", "install it (nothing to build from)"),
    ("status", ""),
    ("add -m excluded -v 1.0", ""),
    ("build -m excluded -v 1.0 -k {K}", "BUILD_EXCLUSIVE_KERNEL rules it out"),
    ("add -m broken -v 1.0", ""),
    ("build -m broken -v 1.0 -k {K}", "a compile error"),
    ("status", ""),
    ("build -m vpoll -v 0.1 --all", "--all with build"),
    ("status -k {K} --all", "-k and --all"),
    ("status -a x86_64 --all", "-a and --all"),
    ("build --bogus", "unknown option"),
    ("build install -m vpoll", "two actions"),
    ("add -m nosuch -v 1", "no source dir"),
    ("build -m vpoll", "no version"),
    ("build -m vpoll -v 0.1 -k 0.0.0-noheaders", "a kernel without headers"),
    # what DKMS 3.2.2's own run_test.sh checks (issue 35)
    ("autoinstall --all", "--all with autoinstall"),
    ("autoinstall -k {K} -k {K}", "two kernels for autoinstall"),
    ("kernel_postinst", "a kernel hook without -k"),
    ("kernel_prerm", "a kernel hook without -k"),
    ("autoinstall -k 0.0.0-noheaders", "no headers, an AUTOINSTALL package to build"),
    ("kernel_postinst -k 0.0.0-noheaders", "the same through the hook"),
    ("add -m needy -v 1.0", ""),
    ("build -m needy -v 1.0 -k {K}", "its BUILD_DEPENDS is not installed"),
    ("build -m needy -v 1.0 -k {K} --force", "the same, --force"),
    ("status -m needy", ""),
)

# Lines of actions or checks a DKMS release added (line -> the first release that has it).
SINCE = {
    "kernel_preinst -k {K}": "3.1.6",
    "autoinstall --all": "3.1.6",  # 3.0.10 took --all and -k -k (deliberate: docs/reference)
    "autoinstall -k {K} -k {K}": "3.1.6",
    "kernel_postinst": "3.1.6",
    "kernel_prerm": "3.1.6",
    "kernel_postinst -k 0.0.0-noheaders": "3.1.6",
}


def lines_for(version: str) -> tuple[tuple[str, str], ...]:
    """LINES that DKMS ``version`` (e.g. "3.0.10") has the action of."""

    def ver(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    return tuple(lw for lw in LINES if ver(SINCE.get(lw[0], "0")) <= ver(version))


_EXCLUDED = """\
PACKAGE_NAME="excluded"
PACKAGE_VERSION="1.0"
BUILT_MODULE_NAME[0]="excluded"
DEST_MODULE_LOCATION[0]="/extra"
BUILD_EXCLUSIVE_KERNEL="^2\\.6\\."
AUTOINSTALL="yes"
"""
_BROKEN = """\
PACKAGE_NAME="broken"
PACKAGE_VERSION="1.0"
BUILT_MODULE_NAME[0]="broken"
DEST_MODULE_LOCATION[0]="/extra"
"""
_NEEDY = """\
PACKAGE_NAME="needy"
PACKAGE_VERSION="1.0"
BUILT_MODULE_NAME[0]="needy"
DEST_MODULE_LOCATION[0]="/extra"
BUILD_DEPENDS="nosuchdep"
"""


@dataclass
class Result:
    rc: int
    out: list[str]  # stdout of status lines; empty for other verbs


def prepare(trees: dict[str, Any], base: Path) -> tuple[Path, Path, Path, Path, Path]:
    """A twin: (src, dkms tree, install tree, incoming dir, tarball dir)."""
    src, dtree, itree, incoming, tdir = (
        base / d for d in ("src", "dkms", "lib-modules", "incoming", "tarballs")
    )
    for d in (src, dtree, itree / trees["gcc"]["kver"], incoming, tdir):
        d.mkdir(parents=True)
    # dkms 3.1 and later look for the headers under --installtree (3.2.2 _get_kernel_dir);
    # 3.0.10 in /lib/modules, which the namespace holds either way.
    (itree / trees["gcc"]["kver"] / "build").symlink_to(trees["gcc"]["build"])
    pkgs = trees["dkms"]["packages"]
    shutil.copytree(pkgs["vpoll-dkms"]["src"], src / "vpoll-0.1", symlinks=True)
    shutil.copytree(pkgs["acpi-call-dkms"]["src"], incoming / "acpi-call-1.2.2", symlinks=True)
    for name, conf, code in (
        ("excluded", _EXCLUDED, "int x;\n"),
        ("broken", _BROKEN, "this is not C;\n"),
        ("needy", _NEEDY, '#include <linux/module.h>\nMODULE_LICENSE("GPL");\n'),
    ):
        d = src / f"{name}-1.0"
        d.mkdir()
        (d / "dkms.conf").write_text(conf)
        (d / "Kbuild").write_text(f"obj-m := {name}.o\n")
        (d / f"{name}.c").write_text(textwrap.dedent(code))
    return src, dtree, itree, incoming, tdir


# What the other tool loads: the two tarballs of acpi-call, made the short way.
TARBALL_LINES: tuple[tuple[str, str], ...] = (
    ("add {IN}/acpi-call-1.2.2", ""),
    ("build acpi-call/1.2.2 -k {K}", ""),
    ("mktarball acpi-call/1.2.2 -k {K} --archive={T}/mine.dkms.tar.gz", ""),
    ("mktarball acpi-call/1.2.2 -k {K} --binaries-only --archive={T}/bin.dkms.tar.gz", ""),
)


def run_tool(
    tool: str,
    trees: dict[str, Any],
    base: Path,
    other: Path,
    lines: tuple[tuple[str, str], ...] = LINES,
    dkms: str = "dkms",
) -> list[Result]:
    """Every line by ``tool``; ``dkms`` names the DKMS of trees.json ("dkms": Debian 12's,
    "dkms13": Debian 13's) that runs, or that extmod answers as."""
    kver, tree = trees["gcc"]["kver"], trees["gcc"]["build"]
    src, dtree, itree, incoming, tdir = prepare(trees, base)
    argv0, env = tool_command(tool, trees, dkms)
    env |= {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(base),
    }
    trees_opts = [f"--dkmstree={dtree}", f"--sourcetree={src}", f"--installtree={itree}"]
    results = []
    log = base / "log"
    for line, _ in lines:
        words = line.format(K=kver, IN=incoming, T=tdir, OTHER=other / "tarballs").split()
        out = base / "stdout"
        with open(log, "a") as f:
            f.write(f"\n$ dkms {' '.join(words)}\n")
        rc = parity.in_namespace(
            kver,
            tree,
            ["bash", "-c", 'exec "$@" > "$0"', str(out), *argv0, *words, *trees_opts],
            env,
            log,
        )
        text = out.read_text()
        with open(log, "a") as f:
            f.write(text)
        status = [normalize(s, base) for s in text.splitlines()] if words[0] == "status" else []
        results.append(Result(rc, status))
    return results


def tool_command(tool: str, trees: dict[str, Any], dkms: str) -> tuple[list[str], dict[str, str]]:
    """The command line that runs ``tool`` ("dkms": the DKMS of trees.json named by
    ``dkms``; else extmod's ``dkms`` answering as that release), and its environment."""
    if tool == "dkms":
        return ["bash", trees[dkms]["dkms"]], {}
    cli = "import sys; from extmod.ui.dkms.cli import main; sys.exit(main())"
    env = {"PYTHONPATH": str(REPO / "src"), "EXTMOD_DKMS_VERSION": release(trees, dkms)}
    return [sys.executable, "-c", cli], env


def release(trees: dict[str, Any], dkms: str) -> str:
    """The upstream release of a Debian dkms version: 3.2.2-1~deb13u1 -> 3.2.2."""
    return re.sub(r"-[^-]*$", "", str(trees[dkms]["dkms_version"]))


def normalize(line: str, base: Path) -> str:
    return line.replace(str(base), "TWIN")


def table(dkms: list[Result], ext: list[Result], kver: str, version: str = "3.0.10") -> str:
    rows = [
        f"| # | command line (`dkms …`) | what it is | dkms {version} exit | extmod exit | "
        "status output |",
        "|---|---|---|---|---|---|",
    ]
    for i, ((line, what), d, e) in enumerate(zip(lines_for(version), dkms, ext, strict=True), 1):
        shown = re.sub(r"--archive=\S+/", "--archive=…/", line).replace("{K}", "KVER")
        shown = re.sub(r"\{(IN|T|OTHER)\}/", "…/", shown)
        if not d.out and not e.out:
            same = ""
        elif d.out == e.out:
            same = "same: " + "; ".join(d.out) if d.out else "same (empty)"
        else:
            same = f"DIFFERS: dkms {d.out} / extmod {e.out}"
        rows.append(
            f"| {i} | `{shown}` | {what} | {d.rc} | {e.rc} | "
            f"{same.replace(kver, 'KVER').replace('|', '/')} |"
        )
    return "\n".join(rows)


def run_both(
    trees: dict[str, Any], work: Path, dkms: str = "dkms"
) -> tuple[list[Result], list[Result]]:
    """Each tool loads the tarballs the other made: extmod first makes its two (the short
    way, TARBALL_LINES, in a twin of their own), then dkms runs every line (loading
    extmod's), then extmod (loading dkms's). ``dkms``: which DKMS (see run_tool)."""
    a, b, pre = work / "dkms", work / "extmod", work / "extmod-tarballs"
    made = run_tool("extmod", trees, pre, a, TARBALL_LINES, dkms)
    assert all(r.rc == 0 for r in made), made
    lines = lines_for(release(trees, dkms))
    dk = run_tool("dkms", trees, a, pre, lines, dkms)
    ext = run_tool("extmod", trees, b, a, lines, dkms)
    return dk, ext


def main() -> int:
    import json

    trees = json.loads((parity.CACHE / "trees.json").read_text())
    work = Path(sys.argv[1]).absolute()
    dkms = sys.argv[2] if len(sys.argv) > 2 else "dkms"  # dkms or dkms13
    dk, ext = run_both(trees, work, dkms)
    print(table(dk, ext, trees["gcc"]["kver"], release(trees, dkms)))
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
