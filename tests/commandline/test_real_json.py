"""`--json` on status, kernels, build and autoinstall, against the real kernel trees."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, extmod, make_root

pytestmark = pytest.mark.slow


def test_json_on_status_kernels_build_autoinstall(tmp_path: Path, trees: dict[str, Any]) -> None:
    gcc = trees["gcc"]["kver"]
    root = make_root(tmp_path / "root", gcc, trees["gcc"]["build"])
    kernels = extmod(["--root", root, "--json", "kernels"])
    assert kernels.rc == 0
    assert [(k["release"], k["compiler"]) for k in json.loads(kernels.out)] == [(gcc, "gcc")]

    built = extmod(
        [
            "--root",
            root,
            "--json",
            "build",
            EXAMPLES / "dkms-pair/hello",
            "-k",
            gcc,
            "-o",
            tmp_path / "out",
        ]
    )
    assert built.rc == 0, built.err
    data = json.loads(built.out)
    assert data["kernel"] == gcc and data["modules"] == [str(tmp_path / "out/hello.ko")]
    assert re.search(r"make KERNELRELEASE=\S+ -C \S+ M=\S+ modules", data["reproducer"])

    assert extmod(["--root", root, "add", EXAMPLES / "dkms-pair"]).rc == 0
    auto = extmod(["--root", root, "--json", "autoinstall", "-k", gcc])
    assert auto.rc == 0, auto.err
    data = json.loads(auto.out)
    assert [(o["ident"], o["kver"], o["action"]) for o in data["outcomes"]] == [
        ("extmod-pair/1.0", gcc, "built"),
        ("extmod-pair/1.0", gcc, "installed"),
    ]
    assert data["depmod"] == [gcc]

    status = extmod(["--root", root, "--json", "status"])
    assert [(r["name"], r["kernel"], r["state"]) for r in json.loads(status.out)] == [
        ("extmod-pair", gcc, "installed")
    ]
