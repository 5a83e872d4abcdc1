"""Issue 6, the load check, on Debian's gcc headers (Module.symvers, CONFIG_MODVERSIONS):
modules made to fail each check are refused with the offending module and symbol named, and
nothing is installed; --force installs; symbols exported by the same package or by a
BUILD_DEPENDS package count as exported."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, HEADER, copy_headers, extmod, make_root, package

pytestmark = pytest.mark.slow


def prebuilt(dest: Path, name: str, ko: Path) -> Path:
    """A package whose build copies a module made elsewhere."""
    dest.mkdir(parents=True)
    shutil.copyfile(ko, dest / "prebuilt.ko")
    (dest / "dkms.conf").write_text(
        f'PACKAGE_NAME="{name}"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="hello"\n'
        f'DEST_MODULE_LOCATION[0]="/extra"\nMAKE[0]="cp prebuilt.ko hello.ko"\n'
    )
    return dest


def hello_for(kernel_dir: str, out: Path) -> Path:
    r = extmod(
        [
            "--root",
            out / "root",
            "-q",
            "build",
            EXAMPLES / "hello",
            "--kernel-dir",
            kernel_dir,
            "-o",
            out / "ko",
        ]
    )
    assert r.rc == 0, r.err
    return out / "ko" / "hello.ko"


def refused(root: Path, src: Path, kver: str, pattern: str) -> None:
    kdir = root / "lib/modules" / kver
    r = extmod(["--root", root, "-q", "install", src, "-k", kver])
    lines = r.err.strip().splitlines()
    assert r.rc == 9 and len(lines) == 1, r.err
    assert re.search(pattern, lines[0]), lines[0]
    assert "--force installs it anyway" in lines[0]
    assert not list(kdir.rglob("*.ko")), "a refused module was installed"
    r = extmod(["--root", root, "-q", "install", src, "-k", kver, "--force"])
    assert r.rc == 0, r.err
    assert list(kdir.rglob("*.ko"))


def test_vermagic_of_another_kernel(trees: dict[str, Any], tmp_path: Path) -> None:
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    ko = hello_for(trees["thinlto"]["build"], tmp_path / "other")
    src = prebuilt(tmp_path / "wrongkernel-1.0", "wrongkernel", ko)
    refused(root, src, kver, rf"hello\.ko: vermagic '6\.1\.192 .*' is not for {kver}")


def test_unknown_symbol(trees: dict[str, Any], tmp_path: Path) -> None:
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    src = package(
        tmp_path / "unknownsym-1.0",
        "unknownsym",
        {
            "u.c": HEADER + "void extmod_no_such_function(void);\n"
            "static int __init u_init(void) { extmod_no_such_function(); return 0; }\n"
            "module_init(u_init);\n"
        },
        "obj-m := u.o\n",
        # modpost only warns when told to: the module builds, the load check catches it.
        make="make -C ${kernel_source_dir} "
        "M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build KBUILD_MODPOST_WARN=1",
    )
    refused(root, src, kver, r"u\.ko: unknown symbol extmod_no_such_function: neither")


def test_crc_that_disagrees(trees: dict[str, Any], tmp_path: Path) -> None:
    gcc = trees["gcc"]
    kver = gcc["kver"]
    # Headers whose _printk has another CRC: what a module built against other headers of
    # the same release (an older ABI build, a rebuilt kernel) records.
    other = tmp_path / "headers"
    copy_headers(Path(gcc["build"]), other)
    symvers = other / "Module.symvers"
    text = symvers.read_text()
    symvers.unlink()
    symvers.write_text(re.sub(r"^0x[0-9a-f]{8}(\t_printk\t)", r"0x12345678\1", text, flags=re.M))
    ko = hello_for(str(other), tmp_path / "other")
    dump = subprocess.run(
        ["modprobe", "--dump-modversions", ko], capture_output=True, text=True, check=True
    ).stdout
    assert "0x12345678\t_printk" in dump
    root = make_root(tmp_path / "root", kver, gcc["build"])
    src = prebuilt(tmp_path / "oldabi-1.0", "oldabi", ko)
    refused(
        root,
        src,
        kver,
        r"hello\.ko: symbol _printk has CRC 0x12345678, "
        rf"{kver} exports 0x[0-9a-f]{{8}}",
    )


def test_own_and_build_depends_exports_count(trees: dict[str, Any], tmp_path: Path) -> None:
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    provide = HEADER + (
        "int extmod_lc_{0}(void) {{ return 42; }}\nEXPORT_SYMBOL_GPL(extmod_lc_{0});\n"
    )
    use = HEADER + (
        "int extmod_lc_{0}(void);\n"
        "static int __init {1}_init(void) {{ return extmod_lc_{0}() - 42; }}\n"
        "module_init({1}_init);\n"
    )
    # One package, two modules: b uses what a exports.
    pair = package(
        tmp_path / "lcpair-1.0",
        "lcpair",
        {"a.c": provide.format("pair"), "b.c": use.format("pair", "b")},
        "obj-m := a.o b.o\n",
    )
    # Two packages: the user's module uses what the provider's exports (BUILD_DEPENDS).
    provider = package(
        tmp_path / "lcprovider-1.0", "lcprovider", {"p.c": provide.format("dep")}, "obj-m := p.o\n"
    )
    # Built with the provider's Module.symvers (KBUILD_EXTRA_SYMBOLS), so c.ko records the
    # symbol's CRC, as a CONFIG_MODVERSIONS kernel requires ($dkms_tree is extmod's
    # build/NAME/VERSION/KVER/dkms).
    user = package(
        tmp_path / "lcuser-1.0",
        "lcuser",
        {"c.c": use.format("dep", "c")},
        "obj-m := c.o\n",
        make="make -C ${kernel_source_dir} M=${dkms_tree}/lcuser/1.0/build "
        "KBUILD_EXTRA_SYMBOLS=${dkms_tree}/../../../../lcprovider/1.0/${kernelver}/dkms/"
        "lcprovider/1.0/build/Module.symvers modules",
        extra='BUILD_DEPENDS="lcprovider"\n',
    )
    # Without it, modpost (told only to warn) leaves no CRC: 6.1's check_version refuses
    # such a module ("no symbol version for"), and so does the load check.
    nocrc = package(
        tmp_path / "lcnocrc-1.0",
        "lcnocrc",
        {"d.c": use.format("dep", "d")},
        "obj-m := d.o\n",
        make="make -C ${kernel_source_dir} "
        "M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build KBUILD_MODPOST_WARN=1",
        extra='BUILD_DEPENDS="lcprovider"\n',
    )
    for src in (pair, provider, user, nocrc):
        assert extmod(["--root", root, "-q", "add", src]).rc == 0
    r = extmod(["--root", root, "--json", "autoinstall", "-k", kver])
    assert r.rc == 9, r.err
    assert "d.ko: no symbol version for extmod_lc_dep" in r.err
    kdir = root / "lib/modules" / kver
    assert sorted(p.name for p in kdir.rglob("*.ko")) == ["a.ko", "b.ko", "c.ko", "p.ko"]


def test_one_bad_module_is_withheld_the_rest_installed(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 13.6: a package whose second module needs a symbol nothing exports. DKMS
    installs both; extmod installs the first, leaves out the second and names it and its
    symbol in the command's output, status, doctor and autoinstall's summary; strict mode
    installs neither; --force installs both."""
    kver = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", kver, trees["gcc"]["build"])
    src = package(
        tmp_path / "halfbad-1.0",
        "halfbad",
        {
            "good.c": HEADER + "static int __init g_init(void) { return 0; }\n"
            "module_init(g_init);\n",
            "echo.c": HEADER + "void extmod_optional_echo(void);\n"
            "void extmod_optional_echo2(void);\n"
            "static int __init e_init(void) { extmod_optional_echo(); "
            "extmod_optional_echo2(); return 0; }\nmodule_init(e_init);\n",
        },
        "obj-m := good.o echo.o\n",
        make="make -C ${kernel_source_dir} "
        "M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build KBUILD_MODPOST_WARN=1",
    )
    kdir = root / "lib/modules" / kver
    strict = extmod(
        ["--root", root, "-q", "install", src, "-k", kver], env={"EXTMOD_LOAD_CHECK": "strict"}
    )
    assert strict.rc == 9, strict.err
    assert "echo.ko: unknown symbol extmod_optional_echo" in strict.err
    assert not list(kdir.rglob("*.ko"))

    r = extmod(["--root", root, "--json", "autoinstall", "-k", kver])
    assert r.rc == 0, r.err
    assert sorted(p.name for p in kdir.rglob("*.ko")) == ["good.ko"]
    # one module, two symbols: one line wherever it is shown (issue 22: one per symbol)
    why = (
        f"unknown symbol extmod_optional_echo: neither {kver} nor this package or its "
        f"BUILD_DEPENDS export it; unknown symbol extmod_optional_echo2: neither {kver} nor "
        f"this package or its BUILD_DEPENDS export it"
    )
    assert r.err.count("withheld echo.ko") == 1 and f"withheld echo.ko: {why}" in r.err, r.err
    results = r.json()["outcomes"]
    assert [x["detail"] for x in results if x["action"] == "installed"] == [
        f"1 modules; withheld: echo.ko: {why}"
    ]
    st = extmod(["--root", root, "status", "-k", kver])
    assert st.out.strip() == f"halfbad/1.0, {kver}, x86_64: installed (withheld echo.ko: {why})"
    doc = extmod(["--root", root, "doctor", "-k", kver])
    assert doc.out.count("withheld echo.ko") == 1
    assert f"halfbad/1.0: withheld echo.ko: {why}" in doc.out
    forced = extmod(["--root", root, "-q", "install", src, "-k", kver, "--force"])
    assert forced.rc == 0, forced.err
    assert sorted(p.name for p in kdir.rglob("*.ko")) == ["echo.ko", "good.ko"]
    assert "withheld" not in extmod(["--root", root, "status", "-k", kver]).out
