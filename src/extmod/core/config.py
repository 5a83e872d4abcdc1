"""One settings table (``core/settings.py``) -> CLI options, environment variables, TOML
keys, defaults, read into a frozen ``Config``.

Precedence, highest first: command-line option, environment variable, config file, default.
The ThinLTO cache dir has one more source, between the config file and the default: the
target kernel's own ``CONFIG_LTO_CLANG_THIN_CACHEDIR`` (see ``thinlto.resolve_base``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extmod.core import files
from extmod.core.errors import UserError
from extmod.core.settings import (
    LISTS,
    SETTINGS,
    Accel,
    CacheMode,
    DkmsVersion,
    GuardMode,
    LoadCheck,
    Location,
    MapPaths,
    SignMode,
    StoreMode,
    VerifyMode,
)


@dataclass(frozen=True)
class Config:
    thinlto_cache_dir: Path | None
    thinlto_cache: CacheMode
    thinlto_max_size: int
    thinlto_max_age: int
    thinlto_max_files: int
    build_jobs: int
    build_launcher: str | None
    build_cache_url: str | None
    build_map_paths: MapPaths
    build_user: str | None
    build_environment: Path | None
    store_max_size: int
    store_max_age: int
    store_url: str | None
    store_mode: StoreMode
    store_trust: tuple[Path, ...] | None
    store_timeout: int
    guard_mode: GuardMode
    guard_critical: tuple[str, ...] | None
    build_keep_max_size: int
    build_keep_max_age: int
    build_dkms_conf_timeout: int
    install_location: Location
    install_load_check: LoadCheck
    verify_after_install: VerifyMode
    verify_timeout: int
    verify_accel: Accel
    verify_memory: int
    dkms_version: DkmsVersion
    sign_key: Path | None
    sign_cert: Path | None
    sign_modules: SignMode
    sign_file: str | None
    # setting key -> where its value came from: "flag", "env", "config", "default"
    sources: Mapping[str, str]
    config_file: Path | None


def flags_of(values: Mapping[str, object]) -> dict[str, str | None]:
    """The settings given as options: argparse's values (by field name) -> setting key."""
    out: dict[str, str | None] = {}
    for s in SETTINGS:
        value = values.get(s.field) if s.flag else None
        out[s.key] = None if value is None else str(value)
    return out


def load(
    config_file: Path | None,
    *,
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    required: bool = False,
) -> Config:
    """Build the frozen Config. ``flags`` maps setting keys to CLI values (None: not given)."""
    table = _read_toml(config_file, required) if config_file else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        section, name = s.key.split(".")
        raw: str | None = None
        where = ""
        if flags.get(s.key) is not None:
            raw, source = flags[s.key], "flag"
            where = s.flag or s.key
        elif s.env and environ.get(s.env):
            raw, source = environ[s.env], "env"
            where = f"environment variable {s.env}"
        elif name in table.get(section, {}):
            value = table[section][name]
            if isinstance(value, list):  # a list of files (store.trust)
                value = ",".join(map(str, value))
            raw, source = (str(value) if not isinstance(value, bool) else ""), "config"
            where = f"{config_file}: [{section}] {name}"
        else:
            raw, source = s.default, "default"
        try:
            values[s.field] = None if raw is None else s.parse(raw)
        except ValueError as e:
            raise UserError(f"{where}: {e}") from None
        sources[s.key] = source
    return Config(**values, sources=sources, config_file=config_file)


def _check_value(path: Path, section: str, name: str, value: object) -> None:
    if f"{section}.{name}" in LISTS and isinstance(value, list):
        if not all(isinstance(v, str) and "," not in v for v in value):
            raise UserError(f"{path}: [{section}] {name}: expected a list of strings")
        return
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise UserError(f"{path}: [{section}] {name}: expected a string or number")


def _read_toml(path: Path, required: bool) -> dict[str, dict[str, Any]]:
    raw = files.read_regular(path, 1 << 20, "config file")
    if raw is None:
        if required:
            raise UserError(f"{path}: config file not found")
        return {}
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: cannot read config file: not UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML: {e}") from None
    known: dict[str, set[str]] = {}
    for s in SETTINGS:
        section, name = s.key.split(".")
        known.setdefault(section, set()).add(name)
    for section, body in data.items():
        if section not in known:
            raise UserError(f"{path}: unknown section [{section}]")
        if not isinstance(body, dict):
            raise UserError(f"{path}: [{section}] must be a table")
        for name, value in body.items():
            if name not in known[section]:
                raise UserError(f"{path}: [{section}] {name}: unknown setting")
            _check_value(path, section, name, value)
    return data


def reference_markdown() -> str:
    """The config file reference (docs/reference/config.md), generated from the settings table."""
    lines = ["| key | default | env | option | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        section, name = s.key.split(".")
        lines.append(
            f"| `[{section}] {name}` | {s.default or '(see meaning)'} | "
            f"{s.env or ''} | {s.flag or ''} | {s.help} |"
        )
    return "\n".join(lines)
