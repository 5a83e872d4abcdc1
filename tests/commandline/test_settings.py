"""The settings table read into a Config (fast): sizes and durations, precedence, one-line
errors, the options each verb takes, the config reference made from the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from extmod.core import config, settings
from extmod.core.errors import UserError


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


def test_the_config_reference_is_the_settings_table() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs/reference/config.md"
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
