"""extmod's .deb on Debian sid (issue 21: "installs and works on Debian 12 and 13 and sid"),
with apt in a real sid chroot: the .deb installs with sid's Python, then sid's kernel
headers (built with sid's gcc) and acpi-call-dkms, which extmod's common.postinst builds and
installs for that kernel with the compiler the kernel names; ``dkms status`` says so."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from chroot import Chroot

pytestmark = [pytest.mark.slow, pytest.mark.disk]


def test_the_deb_installs_and_builds_a_module_on_sid(
    trees: dict[str, Any], deb: Path, tmp_path: Path
) -> None:
    c = Chroot(trees, tmp_path / "root", "chrootsid")
    try:
        release = (c.root / "etc/os-release").read_text()
        assert "sid" in release, release
        (c.root / "tmp" / deb.name).write_bytes(deb.read_bytes())
        c.apt(f"install /tmp/{deb.name}")
        assert c.run("dkms --version").strip() == "dkms-3.2.2"
        out = c.apt("install linux-headers-amd64 acpi-call-dkms")
        assert c.installed("extmod") and not c.installed("dkms"), out[-3000:]
        (kver,) = sorted(p.parent.name for p in (c.root / "lib/modules").glob("*/build"))
        version = c.run("dpkg-query -W -f='${Version}' acpi-call-dkms").strip().split("-")[0]
        status = c.run("dkms status 2>/dev/null").splitlines()
        assert status == [f"acpi-call/{version}, {kver}, x86_64: installed"], (status, out[-3000:])
        (ko,) = c.modules(kver, "acpi_call")
        assert "updates/dkms" in str(ko), ko
        # built with the compiler sid's kernel names (its major version), by sid's Python
        text = c.run(f"grep -h '^CONFIG_CC_VERSION_TEXT' /lib/modules/{kver}/build/.config")
        major = re.search(r"\) (\d+)\.\d+", text)
        assert major, text
        logs = c.run("grep -rh '^# compiler' /var/lib/extmod/build/acpi-call/ || true")
        assert f"gcc-{major.group(1)}" in logs, (text, logs)
        python = c.run("python3 -c 'import sys; print(sys.version_info[:2])'")
        print(f"sid: {kver}, {text.strip()}, Python {python.strip()}")
    finally:
        c.remove()
