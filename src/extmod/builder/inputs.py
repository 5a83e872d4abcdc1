"""What a build depends on, as one digest (the build store's key, and what makes a
recorded build current), and [build] environment's variables, which are among them."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from extmod import __version__
from extmod.core import digest, run
from extmod.core.errors import UserError
from extmod.core.paths import Paths
from extmod.kernel import signing, toolchain
from extmod.kernel.kernel import Kernel
from extmod.source import package


def read_environment(path: Path | None) -> dict[str, str]:
    """[build] environment: the variables bash exports after sourcing ``path`` in a clean
    environment (DKMS 3.3 prepare_build: ``source <( (source FILE; export -p) )``), less
    those of the clean environment itself; PATH stays extmod's. None: no file set."""
    if path is None:
        return {}
    if not path.is_file():
        raise UserError(f"build.environment: {path} is not a file")
    clean = run.scrubbed_env()
    script = 'source "$1" >/dev/null 2>&1; env -0'
    try:
        res = run.query(["bash", "-c", script, "build-environment", path], env=clean, timeout=30)
    except subprocess.TimeoutExpired:
        raise UserError(f"build.environment: {path}: sourcing it took over 30 s") from None
    if res.returncode != 0:
        raise UserError(f"build.environment: {path}: bash could not read it")
    base = run.query(["bash", "-c", "env -0"], env=clean, timeout=30).stdout
    before = set(base.split(b"\0"))
    out: dict[str, str] = {}
    for item in res.stdout.split(b"\0"):
        if item in before or b"=" not in item:
            continue
        name, _, value = item.decode("utf-8", "replace").partition("=")
        if name not in ("PATH", "_", "SHLVL", "PWD", "OLDPWD"):
            out[name] = value
    return out


def inputs_digest(
    pkg: package.Package,
    kernel: Kernel,
    resolved: toolchain.Resolved,
    sign: signing.Signer | None,
    source_digest: str,
    environment: Mapping[str, str] | None = None,
    dependencies: tuple[str, ...] = (),
    places: Mapping[Path, str] | None = None,
) -> str:
    """What a finished build depends on: the source tree's content, dkms.conf as evaluated
    for this kernel, the kernel (release, auto.conf, Module.symvers), the compiler, the
    signing certificate, [build] environment's variables, the builds of its BUILD_DEPENDS
    and extmod itself. The same digest means the same modules.

    Where things sit is not what they are: the paths in the evaluated dkms.conf (``make
    -C ROOT/lib/modules/KVER/build M=STATE/...``) are written by what they are (``places``:
    the kernel's trees, the state dir, the root), so a root copied elsewhere keeps its
    builds and a host at another path fetches them from a shared store."""
    conf = {k: v for k, v in pkg.__dict__.items() if k not in ("warnings", "source", "conf_files")}
    text = digest.of(conf) if not places else _placeless(conf, places)
    cert = digest.file(sign.cert) if sign is not None and sign.cert.is_file() else None
    return digest.of(
        source_digest,
        text,
        kernel.identity(),
        resolved.version_line,
        resolved.make_vars,
        cert,
        sign.hash if sign else None,
        __version__,
        *([sorted(environment.items())] if environment else []),
        *([dependencies] if dependencies else []),
    )


def places_of(kernel: Kernel, paths: Paths) -> dict[Path, str]:
    """The paths a build's inputs name by what they are (``inputs_digest``)."""
    found = {
        kernel.build_dir: "$kernel",
        kernel.source_dir_as_named: "$kernel",
        paths.state_dir: "$state",
        paths.kernels_dir: "$modules",
        paths.source_tree: "$usr_src",
    }
    if kernel.named is not None and kernel.named.parent.parent.name == "modules":
        found[kernel.named.parent.parent] = "$modules"  # a kernel staged elsewhere (preflight)
    if kernel.split_source is not None:
        found[kernel.split_source] = "$kernel_source"
    if paths.root != Path("/"):
        found[paths.root] = "$root"
    return found


def _placeless(conf: Mapping[str, object], places: Mapping[Path, str]) -> str:
    text = json.dumps(conf, sort_keys=True, default=str)
    for path in sorted(places, key=lambda p: len(str(p)), reverse=True):
        text = re.sub(re.escape(str(path)) + r"(?=[/\s\"':]|$)", places[path], text)
    return text
