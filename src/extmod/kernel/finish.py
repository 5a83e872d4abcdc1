"""Finishing a built module as it is installed: strip, sign, compress (the kernel's own
compression settings), in that order."""

from __future__ import annotations

from pathlib import Path

from extmod.core import run
from extmod.core.errors import EnvError
from extmod.kernel.kernel import Kernel
from extmod.kernel.signing import Signer

# CONFIG_MODULE_COMPRESS_* → (suffix, argv that compresses FILE into FILE+suffix). The flags
# are those of the kernel's own scripts/Makefile.modinst (Linux 6.1).
# The last field: the Debian package of the compressor (a hint when it is missing).
_COMPRESSORS = (
    ("CONFIG_MODULE_COMPRESS_GZIP", ".gz", ["gzip", "-9nf"], "gzip"),
    (
        "CONFIG_MODULE_COMPRESS_XZ",
        ".xz",
        ["xz", "-f", "--check=crc32", "--lzma2=dict=1MiB"],
        "xz-utils",
    ),
    ("CONFIG_MODULE_COMPRESS_ZSTD", ".zst", ["zstd", "-q", "-f", "-T0", "--rm"], "zstd"),
)


MODULE_SUFFIXES = (".ko", ".ko.gz", ".ko.xz", ".ko.zst")


def module_stem(filename: str) -> str | None:
    """A module file's name without its suffix (``zfs.ko.xz`` -> ``zfs``); None when the
    file is not a module."""
    return next((filename[: -len(s)] for s in MODULE_SUFFIXES if filename.endswith(s)), None)


def compression(kernel: Kernel) -> tuple[str, list[str]] | None:
    """The kernel's module compression (suffix, argv), its compressor found on PATH: a
    missing one is an EnvError naming the package, before anything is built (Debian 13's
    kernels compress with xz, and a minimal system may lack xz-utils)."""
    for symbol, suffix, argv, package in _COMPRESSORS:
        if kernel.config.get(symbol) == "y":
            return suffix, [run.system_tool(argv[0], package), *argv[1:]]
    return None


def finish_module(
    ko: Path, *, strip: str | None, sign: Signer | None, compress: tuple[str, list[str]] | None
) -> Path:
    """Strip, sign and compress ``ko`` in place, in that order (a signature must come last
    before compression: stripping a signed module breaks it). Returns the final file."""
    try:
        if strip:
            run.capture([strip, "--strip-debug", ko])
        if sign:
            run.capture([sign.sign_file, sign.hash, sign.key, sign.cert, ko])
        if compress:
            suffix, argv = compress
            run.capture([*argv, ko])
            ko.unlink(missing_ok=True)  # gzip and xz remove it already; zstd with --rm
            return ko.with_name(ko.name + suffix)
    except run.CommandFailed as e:
        last = e.output.strip().splitlines()[-1:] or [""]
        raise EnvError(f"{e.argv[0]} failed on {ko.name}: {last[0]}") from None
    return ko
