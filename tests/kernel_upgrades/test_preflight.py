"""apt's guard, its own rules (issue 25, fast): which of apt's incoming packages preflight
stages (the kernel header packages and the incoming tools they depend on, never an image
or an unrelated package), from apt's protocol 3 and 1; the [guard] settings as TOML lists.
The real apt, headers and builds are in test_real_apt.py and test_real_preflight.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, extmod
from extmod.core import config
from extmod.core.errors import UserError
from extmod.ops import preflight

PACKAGES = {
    "linux-headers-9.9.9-amd64": "linux-headers-9.9.9-common, linux-kbuild-9.9.9, pahole, "
    "linux-image-9.9.9-amd64 | linux-image-9.9.9-amd64-unsigned, gcc-12",
    "linux-headers-9.9.9-common": "",
    "linux-kbuild-9.9.9": "libc6 (>= 2.34)",
    "pahole": "libdw1 (>= 0.158), libelf1 (>= 0.144)",
    "libdw1": "libelf1 (= 0.188-2.1)",
    "libelf1": "",
    "linux-image-9.9.9-amd64": "kmod",
    "hello": "libc6",
}


def _deb(d: Path, name: str, depends: str) -> Path:
    pkg = d / name
    (pkg / "DEBIAN").mkdir(parents=True)
    control = f"Package: {name}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\n"
    control += f"Depends: {depends}\n" if depends else ""
    (pkg / "DEBIAN/control").write_text(control + "Description: t\n")
    out = d / f"{name}_1_all.deb"
    subprocess.run(
        ["dpkg-deb", "-b", "-Zgzip", str(pkg), str(out)], check=True, capture_output=True
    )
    return out


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("debs")
    return {n: _deb(d, n, dep) for n, dep in PACKAGES.items()}


WANTED = [
    "libdw1",
    "libelf1",
    "linux-headers-9.9.9-amd64",
    "linux-headers-9.9.9-common",
    "linux-kbuild-9.9.9",
    "pahole",
]


def test_protocol_3_stages_the_headers_and_their_incoming_tools(debs: dict[str, Path]) -> None:
    lines = ["VERSION 3", "APT::Architecture=amd64", "quiet=1", ""]
    for name, deb in debs.items():
        lines.append(f"{name} - - none < 1 all none {deb}")
        lines.append(f"{name} - - none < 1 all none **CONFIGURE**")
    lines.append("oldpkg 1 all none > - - none **REMOVE**")
    got = preflight.incoming("\n".join(lines) + "\n")
    assert sorted(p.name.split("_")[0] for p in got) == WANTED


def test_protocol_1_and_nothing_for_a_run_without_a_kernel(debs: dict[str, Path]) -> None:
    got = preflight.incoming("".join(f"{deb}\n" for deb in debs.values()))
    assert sorted(p.name.split("_")[0] for p in got) == WANTED
    assert preflight.incoming(f"VERSION 3\n\nhello - - none < 1 all none {debs['hello']}\n") == []
    assert preflight.incoming("") == []


def test_guard_settings_take_toml_lists(tmp_path: Path) -> None:
    f = tmp_path / "config.toml"
    f.write_text('[guard]\nmode = "refuse"\ncritical = ["zfs", "nvidia-current"]\n')
    cfg = config.load(f, flags={}, environ={})
    assert cfg.guard_mode == "refuse" and cfg.guard_critical == ("zfs", "nvidia-current")
    assert config.load(f, flags={}, environ={"EXTMOD_GUARD": "off"}).guard_mode == "off"
    for bad, why in (
        ('critical = ["a b"]', "expected package names"),
        ("critical = [1]", "expected a list of strings"),
        ('mode = "maybe"', "expected one of off, warn, refuse"),
    ):
        f.write_text(f"[guard]\n{bad}\n")
        with pytest.raises(UserError, match=why):
            config.load(f, flags={}, environ={})


def _guard(root: Path, text: str, mode: str = "refuse") -> subprocess.CompletedProcess[str]:
    """``extmod apt-guard`` as apt runs it: the package list on stdin."""
    return subprocess.run(
        [sys.executable, "-m", "extmod", "--root", str(root), "apt-guard"],
        input=text,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "EXTMOD_GUARD": mode},
        timeout=60,
    )


def test_bad_debs_are_named_and_a_guard_that_cannot_check_lets_apt_go_on(
    debs: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    not_a_deb = tmp_path / "x.deb"
    not_a_deb.write_text("hello\n")
    for deb, why in (
        (not_a_deb, f"--deb {not_a_deb}: dpkg-deb cannot read it"),
        (debs["hello"], "--deb: no kernel headers in hello_1_all.deb"),
        (tmp_path / "missing.deb", f"--deb {tmp_path / 'missing.deb'}: no such file"),
    ):
        r = extmod(["--root", root, "preflight", "--deb", deb])
        assert r.rc == 3 and len(r.err.strip().splitlines()) == 1 and why in r.err, r.err
    # garbage, and a run without a kernel: nothing to check
    for text in ("\0\xff garbage\n", "VERSION 3\n\nhello - - none < 1 all none /x.deb\n"):
        g = _guard(root, text)
        assert g.returncode == 0 and g.stderr == "", g.stderr
    # header packages with no tree in them (a broken download, an extmod bug): refuse mode
    # or not, the guard says it could not check and apt goes on
    lines = "".join(f"{n} - - none < 1 all none {debs[n]}\n" for n in WANTED)
    g = _guard(root, f"VERSION 3\n\n{lines}")
    assert g.returncode == 0, g.stderr
    assert "the guard could not check the incoming kernel" in g.stderr, g.stderr
    assert not (root / "lib/modules").exists()
