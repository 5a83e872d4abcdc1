"""What ``dkms add`` says of a dkms.conf, extmod's ``dkms`` beside Debian 13's real dkms
3.2.2 (issue 35): for each faulty dkms.conf below, the same exit code and the same lines
(``dkms.conf: Error! …`` one per fault, ``Error! Bad conf file.``, the ``File:`` line
naming the file DKMS names); for a dkms.conf with deprecated directives, the same
``Deprecated feature: …`` lines and the add done; a dkms.conf with CRLF line ends is
added by both. Each tool runs in twin trees of its own (``--dkmstree``, ``--sourcetree``),
in the mount namespace of the parity tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import conformance
import parity

pytestmark = pytest.mark.slow

HEAD = 'PACKAGE_NAME="words"\nPACKAGE_VERSION="1.0"\n'
# name -> dkms.conf; each written for this test, by what 3.2.2's read_conf checks
CONFS: dict[str, str] = {
    "nothing set": "# nothing\n",
    "no version": 'PACKAGE_NAME="words"\n',
    "names and places wrong": HEAD
    + 'DEST_MODULE_NAME[0]="a.ko"\nDEST_MODULE_LOCATION[0]="/boot"\n'
    + 'BUILT_MODULE_NAME[1]="b.o"\nAUTOINSTALL="sometimes"\n',
    "sparse arrays": HEAD
    + 'BUILT_MODULE_NAME[1]="one"\nDEST_MODULE_LOCATION[1]="/extra"\n'
    + 'BUILT_MODULE_NAME[3]="three"\nDEST_MODULE_LOCATION[3]="/updates"\n',
    "one module twice": HEAD
    + 'BUILT_MODULE_NAME[0]="m"\nDEST_MODULE_LOCATION[0]="/extra"\n'
    + 'BUILT_MODULE_NAME[1]="m"\nDEST_MODULE_LOCATION[1]="/updates"\n',
    "deprecated": HEAD
    + 'BUILT_MODULE_NAME[0]="words"\nDEST_MODULE_LOCATION[0]="/extra"\n'
    + 'REMAKE_INITRD="yes"\nMODULES_CONF[0]="options words x=1"\n',
    "crlf": (HEAD + 'BUILT_MODULE_NAME[0]="words"\nDEST_MODULE_LOCATION[0]="/extra"\n').replace(
        "\n", "\r\n"
    ),
}


def _run(
    tool: str, trees: dict[str, Any], base: Path, conf: str | dict[str, str], *verbs: str
) -> list[tuple[int, list[str]]]:
    """``dkms add`` of a package of ``conf`` (and ``failing.c``, which does not compile;
    a dict: one package for each dir name, added in its order), then each of ``verbs``
    (with K for the kernel); each one's exit code and lines."""
    confs = conf if isinstance(conf, dict) else {"pkg": conf}
    kver, tree = trees["gcc"]["kver"], trees["gcc"]["build"]
    src, dtree, itree, incoming = base / "src", base / "dkms", base / "lib-modules", base / "in"
    for d in (src, dtree, itree / kver):
        d.mkdir(parents=True)
    (itree / kver / "build").symlink_to(tree)
    for name, text in confs.items():
        pkg = incoming / name
        pkg.mkdir(parents=True)
        (pkg / "dkms.conf").write_bytes(text.encode())
        (pkg / "words.c").write_text('#include <linux/module.h>\nMODULE_LICENSE("GPL");\n')
        (pkg / "Kbuild").write_text("obj-m := failing.o\n")
        (pkg / "failing.c").write_text("this is not C;\n")
        for script in ("post_add", "pre_inst", "post_inst", "post_rm"):
            (pkg / f"{script}.sh").write_text(f"#!/bin/sh\necho {script} ran\n")
            (pkg / f"{script}.sh").chmod(0o755)
    argv0, env = conformance.tool_command(tool, trees, "dkms13")
    env |= {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(base),
        "parallel_jobs": "1",
    }
    out, log = base / "out", base / "log"
    results = []
    opts = [f"--dkmstree={dtree}", f"--sourcetree={src}", f"--installtree={itree}"]
    for verb in (*(f"add {incoming / name}" for name in confs), *verbs):
        argv = [*argv0, *verb.replace("K", kver).split(), *opts]
        rc = parity.in_namespace(
            kver, tree, ["bash", "-c", 'exec "$@" > "$0" 2>&1', str(out), *argv], env, log
        )
        text = out.read_text().replace(str(base), "BASE")
        results.append((rc, [ln for ln in text.splitlines() if not ln.startswith("Creating sym")]))
    return results


@pytest.mark.parametrize("name", list(CONFS))
def test_dkms_add_says_what_dkms_3_2_2_says(
    trees: dict[str, Any], tmp_path: Path, name: str
) -> None:
    assert conformance.release(trees, "dkms13") == "3.2.2"
    (theirs,) = _run("dkms", trees, tmp_path / "dkms", CONFS[name])
    (ours,) = _run("extmod", trees, tmp_path / "extmod", CONFS[name])
    assert ours == theirs, (name, theirs, ours)
    rc, lines = theirs
    if name in ("deprecated", "crlf"):
        assert rc == 0, lines
    else:  # the case is one DKMS refuses, with its words
        assert rc == 8 and "Error! Bad conf file." in lines, lines
        assert any(line.startswith("dkms.conf: Error! ") for line in lines), lines


FAILING = (
    'PACKAGE_NAME="failing"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="failing"\n'
    'DEST_MODULE_LOCATION[0]="/extra"\nMAKE[0]="make -C ${kernel_source_dir} '
    'M=${dkms_tree}/failing/1.0/build modules"\nAUTOINSTALL="yes"\n'
)


def _from_building(lines: list[str]) -> list[str]:
    """The lines from the build on (the signer's lines name each tool's own key), with the
    ``Consult …`` line's log (DKMS's build dir's make.log, extmod's own log) and make's
    ``M=`` (DKMS's one build dir, extmod's own for each kernel) left out."""
    lines = lines[next(i for i, ln in enumerate(lines) if ln.startswith("Building module")) :]
    lines = [re.sub(r" M=\S+", " M=BUILD", ln) for ln in lines]
    return [re.sub(r"^Consult \S+ ", "Consult LOG ", ln) for ln in lines]


def test_a_failed_build_is_said_as_dkms_3_2_2_says_it(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """``build`` and ``autoinstall`` of a package whose make fails: the exit codes, the
    make's status and the make line DKMS ran, DKMS's error lines and autoinstall's
    summary; the log extmod names holds the compiler's error."""
    verbs = ("build -m failing -v 1.0 -k K", "autoinstall -k K")
    theirs = _run("dkms", trees, tmp_path / "dkms", FAILING, *verbs)
    ours = _run("extmod", trees, tmp_path / "extmod", FAILING, *verbs)
    assert [rc for rc, _ in ours] == [rc for rc, _ in theirs] == [0, 10, 11], (theirs, ours)
    for (_, d), (_, e) in zip(theirs[1:], ours[1:], strict=True):
        assert _from_building(e) == _from_building(d), (d, e)
    (consult,) = [ln for ln in ours[1][1] if ln.startswith("Consult ")]
    log = Path(consult.split()[1].replace("BASE", str(tmp_path / "extmod")))
    assert "this is not C" in log.read_text() or "error:" in log.read_text()
    kver = trees["gcc"]["kver"]
    assert f"Autoinstall on {kver} failed for module(s) failing(10)." in theirs[2][1]


def _after_signer(lines: list[str]) -> list[str]:
    """The lines after the signer's (which name each tool's own key), with the build dir
    a refused PATCH is looked for in left out."""
    signer = ("Sign command:", "Signing key:", "Public certificate", "Binary ", "The kernel is")
    made = "Certificate or key are missing"  # each tool makes its own pair
    lines = [ln for ln in lines if not ln.startswith((*signer, made))]
    return [re.sub(r"^found in \S+/patches/", "found in BUILD/patches/", ln) for ln in lines]


@pytest.mark.parametrize("patch", ["missing.patch", "../up.patch", "sub/../up.patch"])
def test_a_patch_that_cannot_be_applied_is_refused_by_the_build(
    trees: dict[str, Any], tmp_path: Path, patch: str
) -> None:
    """DKMS 3.2.2 adds a package whose PATCH is missing or has a '..' component, and its
    build refuses it (exit 5, prepare_build's words); so does extmod's dkms."""
    conf = (
        HEAD
        + f'BUILT_MODULE_NAME[0]="words"\nDEST_MODULE_LOCATION[0]="/extra"\nPATCH[0]="{patch}"\n'
    )
    verbs = ("build -m words -v 1.0 -k K", "status")
    theirs = _run("dkms", trees, tmp_path / "dkms", conf, *verbs)
    ours = _run("extmod", trees, tmp_path / "extmod", conf, *verbs)
    assert [rc for rc, _ in theirs] == [rc for rc, _ in ours] == [0, 5, 0], (theirs, ours)
    assert [_after_signer(lines) for _, lines in ours] == [
        _after_signer(lines) for _, lines in theirs
    ]
    assert any(ln.startswith("Error! Patch ") for ln in ours[1][1]), ours
    assert ours[2][1] == ["words/1.0: added"]


def _package(name: str, extra: str = "") -> str:
    """A package of one module, ``name``.c (words.c's text: it compiles), AUTOINSTALL."""
    return (
        f'PACKAGE_NAME="{name}"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="{name}"\n'
        f'DEST_MODULE_LOCATION[0]="/extra"\nAUTOINSTALL="yes"\n'
        f'MAKE[0]="cp words.c {name}.c && echo obj-m := {name}.o > Kbuild && make -C '
        f'${{kernel_source_dir}} M=${{dkms_tree}}/{name}/1.0/build modules"\n{extra}'
    )


def test_build_exclusive_autoinstall_and_kernel_prerm_say_what_dkms_3_2_2_says(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """A package BUILD_EXCLUSIVE leaves out and one that builds: ``build`` of the first
    (exit 77, diewarn's words), ``autoinstall`` (each module's lines, a blank line between,
    the succeeded and skipped summary), ``unbuild`` then ``install`` then ``uninstall`` of
    the second, and ``kernel_prerm`` of a module built but not installed. Lines compared
    after the signer's (each tool's own key) and with make's build dir left out."""
    confs = {
        "excl": _package("excl", 'BUILD_EXCLUSIVE_ARCH="none"\n'),
        "good": _package("good"),
    }
    verbs = (
        "build -m excl -v 1.0 -k K",
        "autoinstall -k K",
        "uninstall -m good -v 1.0 -k K",
        "kernel_prerm -k K",
        "status",
    )
    theirs = _run("dkms", trees, tmp_path / "dkms", confs, *verbs)
    ours = _run("extmod", trees, tmp_path / "extmod", confs, *verbs)
    assert [rc for rc, _ in ours] == [rc for rc, _ in theirs] == [0, 0, 77, 0, 0, 0, 0]

    def same(lines: list[str]) -> list[str]:
        out = [re.sub(r"/[^ ]*/good\.ko(\.xz)?$", "/good.ko", ln) for ln in _after_signer(lines)]
        return [ln for ln in out if not ln.startswith("Signing module ")]

    for (_, d), (_, e) in zip(theirs, ours, strict=True):
        assert same(e) == same(d), (d, e)
    kver = trees["gcc"]["kver"]
    assert f"Autoinstall on {kver} was skipped for module(s) excl." in ours[3][1]
    assert f"Module good/1.0 is not installed for kernel {kver} (x86_64). Skipping..." in ours[5][1]


def test_package_scripts_are_said_where_dkms_3_2_2_says_them(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """POST_ADD after the source link; PRE_INSTALL before the modules are put in place,
    POST_INSTALL after; each with its output; POST_REMOVE after an uninstall (remove and
    kernel_prerm uninstall), and not on the remove of what is not installed; a deprecated
    directive said by add and by install."""
    scripts = {"POST_ADD": "post_add", "PRE_INSTALL": "pre_inst", "POST_INSTALL": "post_inst"}
    scripts |= {"POST_REMOVE": "post_rm"}
    extra = "".join(f'{k}="{v}.sh"\n' for k, v in scripts.items()) + 'REMAKE_INITRD="yes"\n'
    verbs = (
        "install -m good -v 1.0 -k K",
        "remove -m good -v 1.0 --all",
        "add -m good -v 1.0",
        "remove -m good -v 1.0 --all",
        "install -m good -v 1.0 -k K",
        "kernel_prerm -k K",
    )
    results = {}
    for tool in ("dkms", "extmod"):
        base = tmp_path / tool
        base.mkdir()
        results[tool] = _run(tool, trees, base, {"good": _package("good", extra)}, *verbs)
    theirs, ours = results["dkms"], results["extmod"]
    assert [rc for rc, _ in ours] == [rc for rc, _ in theirs] == [0, 0, 0, 0, 0, 0, 0], (
        theirs,
        ours,
    )

    def same(lines: list[str]) -> list[str]:
        out = [re.sub(r"/[^ ]*/good\.ko(\.xz)?$", "/good.ko", ln) for ln in _after_signer(lines)]
        return [ln for ln in out if not ln.startswith("Signing module ")]

    for (_, d), (_, e) in zip(theirs, ours, strict=True):
        assert same(e) == same(d), (d, e)
    assert ours[0][1][-2:] == ["Running the post_add script:", "post_add ran"], ours[0]
    install = ours[1][1]
    assert install[0].startswith("Deprecated feature: REMAKE_INITRD ("), install
    assert install.index("pre_inst ran") < install.index("post_inst ran"), install
    assert "post_rm ran" in ours[2][1], ours[2]
    assert "post_rm ran" not in ours[4][1], ours[4]  # nothing was installed
    prerm = ours[6][1]
    assert prerm.index("Running the post_remove script:") < prerm.index("Running depmod... done.")
