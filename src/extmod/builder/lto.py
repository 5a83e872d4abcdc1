"""A build's ThinLTO: the ld.lld wrapper that gives lld extmod's cache flags after kbuild's
(kernel/thinlto.py says where the cache is and why it is never stale)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from extmod.core.config import Config
from extmod.core.paths import Paths
from extmod.kernel import thinlto, toolchain
from extmod.kernel.kernel import KBUILD_CACHE_NONE, Kernel


@dataclass(frozen=True)
class Lto:
    make_vars: tuple[str, ...]
    cache_dir: Path | None
    cache_source: str | None
    cache_base: Path | None

    def keep_only_current(self, kver: str, package: str) -> None:
        if self.cache_dir is not None and self.cache_base is not None:
            thinlto.drop_other_namespaces(self.cache_base, kver, package, keep=self.cache_dir.name)


def setup(
    config: Config,
    kernel: Kernel,
    tc: toolchain.Toolchain,
    resolved: toolchain.Resolved,
    paths: Paths,
    src: Path,
    name: str,
    meta: Path,
) -> Lto:
    """The LD= wrapper that puts extmod's ThinLTO cache flags after kbuild's (lld takes the
    last --thinlto-cache-dir), or a throwaway cache where kbuild insists on one."""
    scratch = meta / "thinlto-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    wrapper = meta / "ld.lld"
    if tc.lto != "thin" or not resolved.ld:
        return Lto((), None, None, None)
    if config.thinlto_cache == "off":
        if kernel.kbuild_cache == KBUILD_CACHE_NONE:
            return Lto((), None, None, None)
        # kbuild insists on a cache here (5.12-6.9): give it a throwaway one.
        scratch.mkdir()
        thinlto.write_ld_wrapper(wrapper, resolved.ld, scratch, "prune_after=0s")
        return Lto((f"LD={wrapper}",), None, None, None)
    choice = thinlto.resolve_base(config, kernel, paths)
    fp = thinlto.fingerprint(src, kernel, resolved.version_line)
    cache_dir = thinlto.namespace(choice.base, kernel.release, name, fp)
    thinlto.ensure_dir(cache_dir)
    thinlto.write_ld_wrapper(wrapper, resolved.ld, cache_dir, thinlto.policy(config))
    return Lto((f"LD={wrapper}",), cache_dir, choice.source, choice.base)
