"""Fast unit tests on small fake trees and fake toolchains (never the only proof)."""

from __future__ import annotations

import os
import re
import time
from dataclasses import fields
from pathlib import Path

import pytest

from extmod.core import config, paths, settings
from extmod.core.errors import KernelError, ToolchainError, UserError
from extmod.kernel import kernel, thinlto, toolchain


def fake_kernel(tmp: Path, extra: str = "", makefile: str = "") -> kernel.Kernel:
    tree = tmp / "kbuild"
    for f in kernel.PREPARED_FILES:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / f).write_text("")
    (tree / "Makefile").write_text(makefile)
    (tree / "include/generated/utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-9-amd64"\n')
    (tree / "include/config/auto.conf").write_text(
        "CONFIG_X86_64=y\nCONFIG_CC_IS_CLANG=y\nCONFIG_CLANG_VERSION=160006\n"
        "CONFIG_LD_IS_LLD=y\nCONFIG_LTO_CLANG_THIN=y\n"
        'CONFIG_CC_VERSION_TEXT="Debian clang version 16.0.6 \\"x\\""\n' + extra
    )
    return kernel.load(tree)


def cfg(**flags: str | None) -> config.Config:
    return config.load(None, flags=flags, environ={})


def test_sizes_and_durations() -> None:
    assert settings.parse_size("2G") == 2 << 30 and settings.parse_size("512m") == 512 << 20
    assert settings.parse_size("100") == 100 and settings.parse_duration("30d") == 30 * 86400
    assert settings.parse_duration("12h") == 43200
    for bad in ("", "1.5G", "lots"):
        with pytest.raises(ValueError):
            settings.parse_size(bad)


def test_config_precedence_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[thinlto]\ncache_dir = "/from/file"\ncache = "off"\n')
    c = config.load(f, flags={}, environ={"EXTMOD_THINLTO_CACHE_DIR": "/from/env"})
    assert c.thinlto_cache_dir == Path("/from/env") and c.sources["thinlto.cache_dir"] == "env"
    assert c.thinlto_cache == "off" and c.sources["thinlto.cache"] == "config"
    c = config.load(f, flags={"thinlto.cache_dir": "/flag"}, environ={})
    assert c.thinlto_cache_dir == Path("/flag")
    for text, msg in (
        ("[thinlto]\nbogus = 1\n", "[thinlto] bogus: unknown setting"),
        ("[nope]\n", "unknown section [nope]"),
        ('[thinlto]\ncache = "maybe"\n', "[thinlto] cache: expected one of"),
        ("[thinlto\n", "invalid TOML"),
    ):
        f.write_text(text)
        with pytest.raises(UserError, match=r"^" + str(f) + r": .*"):
            config.load(f, flags={}, environ={})
        with pytest.raises(UserError) as e:
            config.load(f, flags={}, environ={})
        assert msg in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="config file not found"):
        config.load(tmp_path / "missing.toml", flags={}, environ={}, required=True)


def test_kernel_reading(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    assert (k.release, k.arch, k.lto, k.version) == ("6.1.0-9-amd64", "x86_64", "thin", (6, 1))
    assert k.config["CONFIG_CC_VERSION_TEXT"] == 'Debian clang version 16.0.6 "x"'
    tc = toolchain.from_kernel(k)
    assert (tc.compiler, tc.version, tc.linker, tc.llvm) == ("clang", (16, 0, 6), "lld", True)
    assert k.kbuild_cache == kernel.KBUILD_CACHE_NONE
    (k.build_dir / "include/generated/autoconf.h").unlink()
    k2 = kernel.load(k.build_dir)
    with pytest.raises(KernelError, match=r"include/generated/autoconf\.h is missing"):
        k2.require_prepared()


@pytest.mark.parametrize(
    "line,gen",
    [
        (
            "KBUILD_LDFLAGS += --thinlto-cache-dir=$(extmod_prefix).thinlto-cache",
            kernel.KBUILD_CACHE_KERNEL_TREE,
        ),
        (
            "KBUILD_LDFLAGS += --thinlto-cache-dir=$(extmod-prefix).thinlto-cache",
            kernel.KBUILD_CACHE_MODULE_DIR,
        ),
    ],
)
def test_kbuild_generation(tmp_path: Path, line: str, gen: str) -> None:
    common = tmp_path / "common"
    common.mkdir()
    (common / "Makefile").write_text(f"VERSION = 5\n{line}\n")
    # Debian-style stub that includes the common Makefile.
    k = fake_kernel(tmp_path, makefile=f"include {common}/Makefile\n")
    assert k.kbuild_cache == gen


def _fake_bin(d: Path, name: str, version: str) -> None:
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text(f"#!/bin/sh\necho '{version}'\n")
    p.chmod(0o755)


def test_toolchain_versioned_names_found(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    tc = toolchain.from_kernel(k)
    bindir = tmp_path / "bin"
    for t in ("clang", "ld.lld", "llvm-ar", "llvm-nm", "llvm-objcopy", "llvm-strip"):
        _fake_bin(bindir, f"{t}-99", "clang version 99.0.0")
    tc99 = toolchain.Toolchain("clang", (99, 0, 0), "", "lld", "thin")
    r = toolchain.resolve(tc99, k, path=str(bindir))
    assert r.make_vars == (("LLVM", "-99"),) and r.cc == str(bindir / "clang-99")
    assert r.strip == str(bindir / "llvm-strip-99")
    (bindir / "ld.lld-99").unlink()
    with pytest.raises(ToolchainError, match=r"^ld.lld-99 not found: apt-get install lld-99$"):
        toolchain.resolve(tc99, k, path=str(bindir))
    assert tc.package_for("llvm-nm-16") == "llvm-16"


def test_toolchain_old_kernel_spells_out_tools(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    object.__setattr__(k, "release", "5.15.0-1")
    bindir = tmp_path / "bin"
    for t in ("clang", "ld.lld", "llvm-ar", "llvm-nm", "llvm-objcopy", "llvm-strip"):
        _fake_bin(bindir, f"{t}-99", "clang version 99.0.0")
    r = toolchain.resolve(
        toolchain.Toolchain("clang", (99, 0, 0), "", "lld", "thin"), k, path=str(bindir)
    )
    assert r.make_vars[0] == ("LLVM", "1") and ("CC", str(bindir / "clang-99")) in r.make_vars


def test_toolchain_gcc_by_plain_name(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    bindir = tmp_path / "bin"
    _fake_bin(bindir, "gcc", "gcc (Debian 77.1.0-1) 77.1.0")
    r = toolchain.resolve(
        toolchain.Toolchain("gcc", (77, 1, 0), "", "bfd", "none"), k, path=str(bindir)
    )
    assert r.make_vars == (("CC", "gcc"),)
    with pytest.raises(ToolchainError, match="gcc-78 not found: apt-get install gcc-78"):
        toolchain.resolve(
            toolchain.Toolchain("gcc", (78, 1, 0), "", "bfd", "none"), k, path=str(bindir)
        )


def test_cache_base_order(tmp_path: Path) -> None:
    p = paths.for_invocation(tmp_path / "r", {}, 0)
    k = fake_kernel(tmp_path)
    assert thinlto.resolve_base(cfg(), k, p) == thinlto.CacheChoice(
        tmp_path / "r/var/lib/extmod/thinlto-cache", "default"
    )
    k2 = fake_kernel(tmp_path / "b", extra='CONFIG_LTO_CLANG_THIN_CACHEDIR="/kc"\n')
    assert thinlto.resolve_base(cfg(), k2, p).source == "kernel"
    assert thinlto.resolve_base(cfg(**{"thinlto.cache_dir": "/f"}), k2, p) == thinlto.CacheChoice(
        Path("/f"), "flag"
    )
    with pytest.raises(UserError, match="inside the kernel tree"):
        thinlto.resolve_base(cfg(**{"thinlto.cache_dir": str(k.build_dir / "x")}), k, p)
    with pytest.raises(UserError, match="absolute"):
        thinlto.resolve_base(cfg(**{"thinlto.cache_dir": "rel"}), k, p)
    user = paths.for_invocation(None, {"HOME": "/home/u", "XDG_CACHE_HOME": "/xc"}, 1000)
    assert user.default_cache_dir == Path("/xc/extmod/thinlto")
    assert user.state_dir == Path("/home/u/.local/state/extmod")


def test_policy_string() -> None:
    c = config.load(None, flags={}, environ={})
    assert thinlto.policy(c) == "cache_size_bytes=2147483648:prune_after=2592000s"


def test_fingerprint_guard(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    src = tmp_path / "m"
    src.mkdir()
    (src / "a.c").write_text('asm(".incbin \\"fw.bin\\"");\n')
    (src / "b.c").write_text("int b;\n")
    (src / "fw.bin").write_text("1")
    (src / "Kbuild").write_text("obj-m := m.o\n")
    fp = thinlto.fingerprint(src, k, "clang 16")
    (src / "b.c").write_text("int b = 2;\n")
    assert thinlto.fingerprint(src, k, "clang 16") == fp  # C edits: the key covers them
    (src / "fw.bin").write_text("2")
    fp2 = thinlto.fingerprint(src, k, "clang 16")
    assert fp2 != fp
    assert thinlto.fingerprint(src, k, "clang 17") != fp2
    # A target named through a macro: every non-translation-unit file counts.
    (src / "a.c").write_text('asm(".incbin " PATH);\n')
    (src / "Kbuild").write_text("obj-m := m.o\nccflags-y := -DPATH=x\n")
    fp3 = thinlto.fingerprint(src, k, "clang 16")
    (src / "Kbuild").write_text("obj-m := m.o\nccflags-y := -DPATH=y\n")
    assert thinlto.fingerprint(src, k, "clang 16") != fp3


def test_prune_and_remove(tmp_path: Path) -> None:
    base = tmp_path / "cache"
    ns = base / "6.1" / "pkg" / "abc"
    ns.mkdir(parents=True)
    now = time.time()
    for i in range(4):
        f = ns / f"llvmcache-{i}"
        f.write_bytes(b"x" * 100)
        os.utime(f, (now - i * 3600, now - i * 3600))
    (ns / "llvmcache.timestamp").write_text("")
    c = config.load(None, flags={}, environ={})
    limits = config.Config(**{**c.__dict__, "thinlto_max_size": 150, "thinlto_max_age": 7000})
    r = thinlto.prune(base, limits, now=now)
    # age drops 2h and 3h; size then drops the 1h one to get to <= 150 bytes
    assert (r.files, r.bytes) == (3, 300)
    assert sorted(f.name for f in ns.iterdir()) == ["llvmcache-0", "llvmcache.timestamp"]
    assert [n.files for n in thinlto.namespaces(base)] == [1]
    assert thinlto.remove(base, "pkg", None) == [base / "6.1" / "pkg"]
    assert list(base.iterdir()) == []


def test_the_config_reference_is_the_settings_table() -> None:
    doc = Path(__file__).resolve().parent.parent / "docs/reference/config.md"
    assert config.reference_markdown() in doc.read_text()


def test_setting_options_come_from_the_table_and_are_not_abbreviated() -> None:
    """Issue 14: --thinlto-cache existed on build only, so `install X --thinlto-cache off`
    was read as an abbreviation of --thinlto-cache-dir."""
    from extmod.ui import argv

    p = argv.parser()
    args = p.parse_args(["install", "X", "--thinlto-cache", "off", "-j", "3"])
    flags = config.flags_of(vars(args))
    assert flags["thinlto.cache"] == "off" and flags["build.jobs"] == "3"
    assert flags["thinlto.cache_dir"] is None
    with pytest.raises(SystemExit) as e:
        p.parse_args(["install", "X", "--thinlto-cach", "off"])
    assert e.value.code == 2
    for s in settings.SETTINGS:
        for verb in s.verbs:
            words = (
                verb.split()
                + (["X"] if verb in ("build", "install") else [])
                + (["6.1"] if verb == "kernel-postinst" else [])
            )
            value = s.choices[0] if s.choices else "1"
            got = vars(p.parse_args([*words, s.flag or "", value]))
            assert got[s.field] == value, (s.key, verb)


def test_bad_environment_value_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from extmod.ui import cli

    monkeypatch.setenv("EXTMOD_DKMS_CONF_TIMEOUT", "abc")
    assert cli.main(["--root", str(tmp_path), "status"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "extmod: error: environment variable EXTMOD_DKMS_CONF_TIMEOUT: expected a "
        "duration like 12h or 30d, got 'abc'"
    ]


def test_build_record_reads_what_the_last_release_wrote(tmp_path: Path) -> None:
    """build.json as release 0.1.0 wrote it (build.py's dict; migrate.py's had fewer keys and
    imported_from) reads into the typed record and writes back the same keys."""
    from extmod.store.state import BuildRecord, BuiltModule

    module = {
        "built_name": "hello",
        "dest_name": "hello",
        "dest_location": "/updates/dkms",
        "file": "hello.ko",
        "sha256": "ab" * 32,
    }
    compiled = {
        "name": "pair", "version": "1.0", "kernel": "6.1.0-56-amd64", "arch": "x86_64",
        "kernel_tree": "/usr/src/linux-headers-6.1.0-56-amd64", "kernel_identity": "k1",
        "inputs": "d1", "compiler": "gcc-12 (Debian 12.2.0-14) 12.2.0",
        "reproducer": "make -C ...", "make_vars": ["CC=gcc-12"], "signed": True,
        "compressed": None, "thinlto_cache_dir": None, "seconds": 2.5,
        "started_at": 1.0, "built": "2026-11-24T10:00:00Z", "load_check": [],
        "exports": ["hello_fn"], "modules": [module],
    }  # fmt: skip
    imported = {
        "name": "pair", "version": "1.0", "kernel": "6.1.0-56-amd64", "arch": "x86_64",
        "kernel_tree": None, "kernel_identity": None, "inputs": None,
        "imported_from": "/var/lib/dkms/pair/1.0/6.1.0-56-amd64/x86_64/module",
        "built": "2026-11-24T10:00:00Z", "load_check": [], "exports": [],
        "modules": [module], "a_key_of_a_later_release": 1,
    }  # fmt: skip
    for data in (compiled, imported):
        rec = BuildRecord.from_json(data, tmp_path / "build.json")
        assert rec.modules == (BuiltModule(**module),)
        back = rec.to_json()
        # every key written comes back with its value (issue 22: comparing only the keys on
        # both sides let a field dropped on write pass); a later release's key is left out
        known = {k: v for k, v in data.items() if k != "a_key_of_a_later_release"}
        assert {k: back.get(k, "MISSING") for k in known} == known
        assert set(back) == {f.name for f in fields(BuildRecord)}
        assert BuildRecord.from_json(back, tmp_path / "build.json") == rec
    rec = BuildRecord.from_json(compiled, tmp_path / "build.json")
    assert (rec.inputs, rec.exports, rec.signed) == ("d1", ("hello_fn",), True)
    where = re.escape(str(tmp_path / "build.json"))
    with pytest.raises(UserError, match=f"^{where}: kernel: missing$"):
        BuildRecord.from_json({"name": "x", "version": "1"}, tmp_path / "build.json")
    with pytest.raises(UserError, match=f"^{where}: modules\\[0\\].sha256: expected a string"):
        BuildRecord.from_json(
            {**compiled, "modules": [{**module, "sha256": None}]}, tmp_path / "build.json"
        )


@pytest.mark.parametrize("kver", ["..", "../..", "a b", "x" * 65, "", "a\x01b"])
def test_a_kernel_release_that_cannot_name_a_dir_is_refused_by_both_command_lines(
    kver: str,
) -> None:
    """Issue 22: `kernel-prerm ../..` removed every package's build dir. -k and KVER are
    checked before anything reads what they name, in both command lines."""
    from extmod.core import paths
    from extmod.ui import cli
    from extmod.ui.dkms import args as dkmsargs

    assert paths.release_problem(kver)
    assert paths.release_problem("6.1.0-57-amd64") == ""
    assert cli.main(["--root", "/nonexistent", "kernel-prerm", kver]) == 3
    assert cli.main(["--root", "/nonexistent", "status", "-k", kver]) == 3
    with pytest.raises(dkmsargs.DkmsExit) as e:
        dkmsargs.parse(["kernel_prerm", "-k", kver])
    assert e.value.code == 2


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
