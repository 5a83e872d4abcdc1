"""The command that installs a missing package, by distribution: one function, never
written by hand (fast)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from extmod.core import paths


@pytest.mark.parametrize(
    ("os_release", "names", "want"),
    [
        ("ID=debian\n", ("busybox-static",), "apt-get install busybox-static"),
        (
            "ID=ubuntu\nID_LIKE=debian\n",
            ("linux-headers-6.8.0-1-generic",),
            "apt-get install linux-headers-6.8.0-1-generic",
        ),
        (
            'ID="fedora"\n',
            ("linux-headers-6.11.4-301.fc41.x86_64",),
            "dnf install kernel-devel-6.11.4-301.fc41.x86_64",
        ),
        (
            'ID="rocky"\nID_LIKE="rhel centos fedora"\n',
            ("clang-19", "lld-19"),
            "dnf install clang lld",
        ),
        ("ID=arch\n", ("qemu-system-x86", "make"), "pacman -S qemu-system-x86 make"),
        ("ID=arch\n", ("linux-image-6.12.1-arch1-1",), "pacman -S linux"),
        ("ID=gentoo\n", ("make",), "install make (Debian's name)"),
    ],
)
def test_install_hints_name_the_distributions_command_and_package(
    os_release: str, names: tuple[str, ...], want: str, tmp_path: Path
) -> None:
    """Issue 24: one distro-keyed function for every install hint."""
    from extmod.core import hints

    f = tmp_path / "os-release"
    f.write_text(os_release)
    assert hints.install(*names, os_release=f) == want


def test_no_install_hint_is_written_by_hand() -> None:
    src = Path(paths.__file__).resolve().parent.parent
    literal = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if p.name != "hints.py" and re.search(r"(apt-get|dnf) install [a-z]", p.read_text())
    ]
    assert not literal, literal
