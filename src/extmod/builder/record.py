"""A build's record (``build.json``, ``state.BuildRecord``): one function makes it, for a
build make made and for one taken from a build store, and one publishes it with its
finished modules in the state tree."""

from __future__ import annotations

from pathlib import Path

from extmod.core import atomic
from extmod.kernel.kernel import Kernel
from extmod.store import builds
from extmod.store.state import Added, BuildRecord, Built, BuiltModule, State, now


def make(
    added: Added,
    kernel: Kernel,
    inputs: str,
    modules: list[BuiltModule],
    meta: builds.Meta,
    *,
    signed: bool,
    compressed: str | None,
    seconds: float,
    started_at: float,
    thinlto_cache_dir: Path | None = None,
    from_store: str | None = None,
) -> BuildRecord:
    """The record of ``added``'s build for ``kernel``: its finished ``modules``, what
    ``meta`` says of how they were made (load check, exports, compiler, reproducer, make
    variables), how they were finished (``signed``, ``compressed``), and, for a build
    taken from a store, the digest of the stored one (``from_store``)."""
    return BuildRecord(
        name=added.name,
        version=added.version,
        kernel=kernel.release,
        arch=kernel.arch,
        built=now(),
        modules=tuple(modules),
        kernel_tree=str(kernel.build_dir),
        kernel_identity=kernel.identity(),
        inputs=inputs,
        load_check=meta.load_check,
        exports=meta.exports,
        compiler=meta.compiler,
        reproducer=meta.reproducer,
        make_vars=meta.make_vars,
        signed=signed,
        compressed=compressed,
        thinlto_cache_dir=str(thinlto_cache_dir) if thinlto_cache_dir else None,
        seconds=round(seconds, 3),
        started_at=round(started_at, 3),
        from_store=from_store,
    )


def publish(state: State, tmp: Path, record: BuildRecord) -> Built:
    """``tmp`` (the finished modules) with its build.json renamed into the state tree."""
    atomic.write_json(tmp / "build.json", record.to_json())
    state.publish_built(tmp, record.name, record.version, record.kernel, record.arch)
    built = state.find_built(record.name, record.version, record.kernel, record.arch)
    assert built is not None
    return built
