"""Modules extmod built load: boot the target kernel in qemu (software emulation) with a
busybox initramfs whose /init insmods, lists and rmmods them."""

from __future__ import annotations

import lzma
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, boot, check_console, copy_example, extmod, make_root

pytestmark = pytest.mark.slow


def test_debian_kernel_loads_gcc_modules(trees: dict[str, Any], tmp_path: Path) -> None:
    gcc = trees["gcc"]
    mods = []
    for example in ("hello", "twofile"):
        src = copy_example(example, tmp_path)
        r = extmod(
            ["--root", tmp_path / "root", "--json", "build", src, "--kernel-dir", gcc["build"]]
        )
        assert r.rc == 0, r.err
        mods += [Path(m) for m in r.json()["modules"]]
    console = boot(Path(gcc["vmlinuz"]), mods, trees["busybox"], tmp_path)
    check_console(
        console,
        gcc["kver"],
        ["hello", "twofile"],
        [
            "extmod-hello: loaded",
            "extmod-hello: unloaded",
            "extmod-twofile: loaded, answer 42",
            "extmod-twofile: unloaded",
        ],
    )


def test_tiny_thinlto_kernel_loads_two_file_module(trees: dict[str, Any], tmp_path: Path) -> None:
    thin = trees["thinlto"]
    src = copy_example("twofile", tmp_path)
    r = extmod(["--root", tmp_path / "root", "--json", "build", src, "--kernel-dir", thin["build"]])
    assert r.rc == 0, r.err
    console = boot(
        Path(thin["bzimage"]), [Path(m) for m in r.json()["modules"]], trees["busybox"], tmp_path
    )
    check_console(
        console,
        thin["kver"],
        ["twofile"],
        ["extmod-twofile: loaded, answer 42", "extmod-twofile: unloaded"],
    )


def test_debian_kernel_loads_installed_signed_modules(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """What `extmod install` put in /lib/modules (stripped, signed with extmod's MOK key)
    loads; the kernel does not trust the key, so it only taints (no MODULE_SIG_FORCE)."""
    gcc = trees["gcc"]
    root = make_root(tmp_path / "root", gcc["kver"], gcc["build"])
    r = extmod(["--root", root, "install", EXAMPLES / "dkms-pair", "-k", gcc["kver"]])
    assert r.rc == 0, r.err
    mods = sorted((root / "lib/modules" / gcc["kver"] / "updates/dkms").glob("*.ko"))
    assert [m.name for m in mods] == ["hello.ko", "twofile.ko"]
    console = boot(Path(gcc["vmlinuz"]), mods, trees["busybox"], tmp_path)
    check_console(
        console,
        gcc["kver"],
        ["hello", "twofile"],
        ["extmod-hello: loaded", "extmod-twofile: loaded, answer 42"],
    )


# -- the 6.12 generation (issue 13) ---------------------------------------------------------
def test_debian_612_kernel_loads_installed_modules(trees: dict[str, Any], tmp_path: Path) -> None:
    """Debian's 6.12 from bookworm-backports (built with x86_64-linux-gnu-gcc-12, modules xz
    compressed): what `extmod install` put in /lib/modules loads on its kernel."""
    deb = trees["debian612"]
    root = make_root(tmp_path / "root", deb["kver"], deb["build"], source=deb["source"])
    r = extmod(["--root", root, "install", EXAMPLES / "dkms-pair", "-k", deb["kver"]])
    assert r.rc == 0, r.err
    assert "x86_64-linux-gnu-gcc-12" in r.out + r.err  # the compiler the kernel names
    installed = sorted((root / "lib/modules" / deb["kver"] / "updates/dkms").iterdir())
    assert [m.name for m in installed] == ["hello.ko.xz", "twofile.ko.xz"]
    mods = []
    for f in installed:  # modprobe decompresses in user space; busybox insmod cannot
        ko = tmp_path / f.name.removesuffix(".xz")
        ko.write_bytes(lzma.decompress(f.read_bytes()))
        mods.append(ko)
    console = boot(Path(deb["vmlinuz"]), mods, trees["busybox"], tmp_path / "qemu")
    check_console(
        console,
        deb["kver"],
        ["hello", "twofile"],
        ["extmod-hello: loaded", "extmod-twofile: loaded, answer 42"],
    )


def test_tiny_thinlto_612_kernel_loads_two_file_module(
    trees: dict[str, Any], tmp_path: Path
) -> None:
    """A clang-16 ThinLTO 6.12 kernel: the generation whose kbuild has no ThinLTO cache."""
    thin = trees["thinlto612"]
    src = copy_example("twofile", tmp_path)
    r = extmod(["--root", tmp_path / "root", "--json", "build", src, "--kernel-dir", thin["build"]])
    assert r.rc == 0, r.err
    console = boot(
        Path(thin["bzimage"]), [Path(m) for m in r.json()["modules"]], trees["busybox"], tmp_path
    )
    check_console(
        console,
        thin["kver"],
        ["twofile"],
        ["extmod-twofile: loaded, answer 42", "extmod-twofile: unloaded"],
    )
