"""dkms.conf evaluation (bash in a child) on small fake packages: fast, no kernel build."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from extmod.core.errors import UserError
from extmod.source import package, rules


def conf_kernel(
    kver: str = "6.1.0-56-amd64",
    config: dict[str, str] | None = None,
    tree: Path = Path("/nonexistent"),
) -> package.ConfKernel:
    return package.ConfKernel(
        kver=kver,
        arch="x86_64",
        kernel_source_dir=tree,
        kernel_config=config or {},
        version=rules.version_tuple(kver),
    )


def ctx(tmp: Path) -> package.Context:
    return package.Context(
        dkms_tree=tmp / "dkms",
        source_tree=tmp / "src",
        install_tree=tmp / "lib/modules",
        etc_dkms=tmp / "etc/dkms",
    )


def write(tmp: Path, text: str, name: str = "pkg-1.0") -> Path:
    src = tmp / "src" / name
    src.mkdir(parents=True)
    (src / "dkms.conf").write_text(text)
    return src


BASE = 'PACKAGE_NAME="pkg"\nPACKAGE_VERSION="1.0"\n'


def test_bash_program_with_loop_config_and_overrides(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / ".config").write_text("CONFIG_FOO=y\n")
    src = write(
        tmp_path,
        BASE
        + """
. $kernel_source_dir/.config
i=0
for m in a b; do
  BUILT_MODULE_NAME[$i]=$m; DEST_MODULE_LOCATION[$i]=/extra; i=$((i+1))
done
[ -n "$CONFIG_FOO" ] && BUILT_MODULE_NAME[$i]=foo && DEST_MODULE_LOCATION[$i]=/updates
MAKE[0]="make -C $kernel_source_dir M=$dkms_tree/$PACKAGE_NAME/$PACKAGE_VERSION/build"
MAKE[1]="make old"
MAKE_MATCH[1]="^5\\."
STRIP[0]=no
REMAKE_INITRD=yes
echo noise on stdout
""",
    )
    etc = tmp_path / "etc/dkms"
    etc.mkdir(parents=True)
    # The per-kernel override sees the directives but not dkms.conf's locals (i, m).
    (etc / "pkg-1.0-6.1.0-56-amd64.conf").write_text(
        'DEST_MODULE_LOCATION[1]=/kernel/drivers/x\nAUTOINSTALL="yes${i}"\n'
    )
    p = package.load(src, conf_kernel(tree=tree), ctx(tmp_path))
    assert [m.built_name for m in p.modules] == ["a", "b", "foo"]
    assert [m.dest_location for m in p.modules] == ["/extra", "/kernel/drivers/x", "/updates"]
    assert [m.strip for m in p.modules] == [False, False, False]  # STRIP[0] is the default
    assert p.make == f"make -C {tree} M={tmp_path}/dkms/pkg/1.0/build"
    assert p.autoinstall is True
    # DKMS 3.4's words (read_conf's deprecated): "Deprecated feature: REMAKE_INITRD (FILE)"
    assert any(w.startswith("Deprecated feature: REMAKE_INITRD (") for w in p.warnings)
    assert len(p.conf_files) == 2
    assert (
        package.load(src, conf_kernel("5.10.0-1-amd64", tree=tree), ctx(tmp_path)).make
        == "make old"
    )


@pytest.mark.parametrize(
    ("extra", "kver", "config", "why"),
    [
        ('BUILD_EXCLUSIVE_KERNEL="^5\\."', "6.1.0-1-amd64", {}, "BUILD_EXCLUSIVE_KERNEL"),
        ('BUILD_EXCLUSIVE_KERNEL_MIN="6.2"', "6.1.0-1-amd64", {}, "KERNEL_MIN"),
        ('BUILD_EXCLUSIVE_KERNEL_MAX="6.0"', "6.1.0-1-amd64", {}, "KERNEL_MAX"),
        ('BUILD_EXCLUSIVE_ARCH="^arm"', "6.1.0-1-amd64", {}, "BUILD_EXCLUSIVE_ARCH"),
        ('BUILD_EXCLUSIVE_CONFIG="CONFIG_ACPI"', "6.1.0-1-amd64", {}, "CONFIG_ACPI is not set"),
        ('BUILD_EXCLUSIVE_CONFIG="!CONFIG_RT"', "6.1.0-1-amd64", {"CONFIG_RT": "y"}, "is set"),
        ('OBSOLETE_BY="6.0"', "6.1.0-1-amd64", {}, "OBSOLETE_BY"),
        # dkms's VER comparison (3.0.11+): MAX="6.1" rules out 6.1.y ("4.12" excludes
        # "4.12-rc1", says dkms(8)); the ABI number counts for MIN
        ('BUILD_EXCLUSIVE_KERNEL_MAX="6.1"', "6.1.99-1", {}, "KERNEL_MAX"),
        ('BUILD_EXCLUSIVE_KERNEL_MAX="6.1"', "6.0.9-1", {}, None),
        ('BUILD_EXCLUSIVE_KERNEL_MIN="6.1.0-20"', "6.1.0-18-amd64", {}, "KERNEL_MIN"),
        ('BUILD_EXCLUSIVE_KERNEL_MIN="6.1.0-20"', "6.1.0-20-amd64", {}, None),
        ('BUILD_EXCLUSIVE_KERNEL_MIN="3.5"', "3.5-rc2", {}, None),
        ('OBSOLETE_BY="6.1"', "6.1", {}, None),
        ('OBSOLETE_BY="6.1"\nBUILD_EXCLUSIVE_KERNEL_MAX="7.0"', "6.2.0-1", {}, None),
        (
            'BUILD_EXCLUSIVE_CONFIG="CONFIG_ACPI !CONFIG_RT"',
            "6.1.0-1-amd64",
            {"CONFIG_ACPI": "m"},
            None,
        ),
    ],
)
def test_build_exclusive(
    tmp_path: Path, extra: str, kver: str, config: dict[str, str], why: str | None
) -> None:
    src = write(
        tmp_path, BASE + "BUILT_MODULE_NAME[0]=a\nDEST_MODULE_LOCATION[0]=/extra\n" + extra + "\n"
    )
    p = package.load(src, conf_kernel(kver, config), ctx(tmp_path))
    if why is None:
        assert p.excluded is None
    else:
        assert p.excluded is not None and why in p.excluded


def test_per_module_exclusion_drops_only_that_module(tmp_path: Path) -> None:
    src = write(
        tmp_path,
        BASE
        + """BUILT_MODULE_NAME[0]=a
DEST_MODULE_LOCATION[0]=/extra
BUILT_MODULE_NAME[1]=b
DEST_MODULE_LOCATION[1]=/extra
BUILD_EXCLUSIVE_CONFIG[1]="CONFIG_B"
""",
    )
    p = package.load(src, conf_kernel(), ctx(tmp_path))
    assert p.excluded is None
    assert [m.built_name for m in p.modules] == ["a"]


OK = "BUILT_MODULE_NAME[0]=a\nDEST_MODULE_LOCATION[0]=/extra\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("BUILT_MODULE_NAME[0]=a\n", "DEST_MODULE_LOCATION[0]: not set"),
        (
            "BUILT_MODULE_NAME[0]=a.ko\nDEST_MODULE_LOCATION[0]=/extra\n",
            "BUILT_MODULE_NAME[0]: 'a.ko' must not end in .o or .ko",
        ),
        (
            "BUILT_MODULE_NAME[0]=a\nDEST_MODULE_LOCATION[0]=/etc\n",
            "DEST_MODULE_LOCATION[0]: '/etc' must begin with /kernel, /updates or /extra",
        ),
        (
            "BUILT_MODULE_NAME[0]=a\nDEST_MODULE_LOCATION[0]=/extra/../../../etc\n",
            "must begin with /kernel",
        ),
        (
            "BUILT_MODULE_NAME[0]=a\nBUILT_MODULE_LOCATION[0]=../x\nDEST_MODULE_LOCATION[0]=/extra\n",
            "BUILT_MODULE_LOCATION[0]: '../x/' leaves the build dir",
        ),
        # issue 22: values that used to be taken silently, and change what is built where
        (OK + 'BUILD_EXCLUSIVE_KERNEL_MIN="six"\n', "BUILD_EXCLUSIVE_KERNEL_MIN: 'six' is not"),
        (OK + 'BUILD_EXCLUSIVE_KERNEL_MAX="v6.1"\n', "BUILD_EXCLUSIVE_KERNEL_MAX: 'v6.1' is not"),
        (OK + 'OBSOLETE_BY="latest"\n', "OBSOLETE_BY: 'latest' is not a kernel version"),
        (OK + 'BUILD_EXCLUSIVE_ARCH="x86_64("\n', "BUILD_EXCLUSIVE_ARCH: bad regular expression"),
        (OK + 'BUILD_EXCLUSIVE_CONFIG="ACPI"\n', "BUILD_EXCLUSIVE_CONFIG: 'ACPI': expected"),
        (OK + 'AUTOINSTALL="yep"\n', "AUTOINSTALL: unsupported value 'yep' (yes, no or empty)"),
        (OK + 'NO_WEAK_MODULES="1"\n', "NO_WEAK_MODULES: unsupported value '1'"),
        (OK + 'BUILD_DEPENDS="a ../b"\n', "BUILD_DEPENDS: '../b' is not a name"),
        (
            OK + "BUILT_MODULE_NAME[1]=a\nDEST_MODULE_LOCATION[1]=/extra\n",
            "BUILT_MODULE_NAME[1]: duplicate module 'a'",
        ),
        (
            OK + "BUILT_MODULE_NAME[1]=b\nDEST_MODULE_NAME[1]=a\nDEST_MODULE_LOCATION[1]=/extra\n",
            "DEST_MODULE_NAME[1]: duplicate module 'a'",
        ),
    ],
)
def test_bad_directives_name_file_and_field(tmp_path: Path, body: str, message: str) -> None:
    src = write(tmp_path, BASE + body)
    with pytest.raises(UserError) as e:
        package.load(src, conf_kernel(), ctx(tmp_path))
    assert str(e.value).startswith(f"{src}/dkms.conf: ")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_identity_required_and_values_read_as_dkms_does(tmp_path: Path) -> None:
    src = write(tmp_path, 'PACKAGE_NAME="pkg"\n')
    with pytest.raises(UserError, match="PACKAGE_VERSION: not set"):
        package.identify(src / "dkms.conf", ctx(tmp_path))
    (src / "dkms.conf").write_text('PACKAGE_NAME="x/../y"\nPACKAGE_VERSION=1\n')
    with pytest.raises(UserError, match=re.escape("PACKAGE_NAME: 'x/../y' is not a valid")):
        package.identify(src / "dkms.conf", ctx(tmp_path))
    # A value is read as DKMS 3.0.10's safe_source reads it: evaluated a second time when
    # its echoed form is sourced, so $(...) in single quotes runs at read time, in the
    # evaluating child (test_dkms_semantics compares every shape with dkms itself).
    mark = tmp_path / "ran"
    (src / "dkms.conf").write_text(
        BASE + "BUILT_MODULE_NAME[0]=a\n"
        "DEST_MODULE_LOCATION[0]=/extra\n"
        f"MAKE[0]='make $(touch {mark}; echo X=1)'\n"
    )
    p = package.load(src, conf_kernel(), ctx(tmp_path))
    assert p.make == "make X=1"
    assert mark.exists()


def test_a_patch_in_a_subdir_of_patches_is_taken(tmp_path: Path) -> None:
    """dkms 3.2.2 applies PATCH=(a.patch subdir/b.patch) from patches/ (its run_test.sh
    dkms_patches_test); a link out of patches/ is still refused."""
    src = write(tmp_path, BASE + OK + "PATCH=(a.patch sub/b.patch)\n")
    (src / "patches/sub").mkdir(parents=True)
    (src / "patches/a.patch").write_text("")
    (src / "patches/sub/b.patch").write_text("")
    assert package.load(src, conf_kernel(), ctx(tmp_path)).patches == ("a.patch", "sub/b.patch")
    (src / "patches/sub/b.patch").unlink()
    (src / "patches/sub/b.patch").symlink_to("/etc/passwd")
    fault = package.load(src, conf_kernel(), ctx(tmp_path)).bad_patch
    assert fault is not None and (fault.index, fault.kind) == (1, "outside")
    assert re.search(r"PATCH\[1\]: 'sub/b.patch': give a path in patches/", str(fault.error()))


@pytest.mark.parametrize(
    ("patch", "kind", "message"),
    [
        ("../x.patch", "dots", "PATCH[0]: '../x.patch': give a path in patches/"),
        ("sub/../../x.patch", "dots", "PATCH[0]: 'sub/../../x.patch': give a path in patches/"),
        ("/etc/passwd", "outside", "PATCH[0]: '/etc/passwd': give a path in patches/"),
        ("gone.patch", "missing", "PATCH[0]: patches/gone.patch does not exist"),
    ],
)
def test_a_patch_that_cannot_be_applied_is_read_and_its_fault_kept(
    tmp_path: Path, patch: str, kind: str, message: str
) -> None:
    """DKMS 3.2.2 adds such a package and refuses its build (exit 5): the package reads,
    and its fault is what a build raises, naming the file and the field."""
    src = write(tmp_path, BASE + OK + f'PATCH[0]="{patch}"\n')
    pkg = package.load(src, conf_kernel(), ctx(tmp_path))
    assert pkg.bad_patch is not None and pkg.bad_patch.kind == kind
    error = pkg.bad_patch.error()
    assert isinstance(error, UserError) and str(error) == f"{src}/dkms.conf: {message}"
