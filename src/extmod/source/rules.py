"""What dkms.conf's values must be, and how DKMS matches them: each value checked (regexes,
versions, CONFIG_ words, yes/no, names), deprecated directives, MAKE_MATCH/PATCH_MATCH,
BUILD_EXCLUSIVE_* against a kernel, DKMS's version comparison."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from extmod.core.errors import UserError

# Read by old DKMS versions, ignored by 3.x with a warning; so here.
DEPRECATED = (
    "REMAKE_INITRD",
    "MODULES_CONF",
    "MODULES_CONF_OBSOLETES",
    "MODULES_CONF_ALIAS_TYPE",
    "MODULES_CONF_OBSOLETE_ONLY",
)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+~-]*$")


_CONFIG_WORD = re.compile(r"!?CONFIG_[A-Za-z0-9_]+")


def _is_regex(conf: Path, fld: str, value: str) -> None:
    search(conf, fld, value, "")


def _is_version(conf: Path, fld: str, value: str) -> None:
    if value and not re.match(r"\d+(\.\d+)*", value):
        raise UserError(f"{conf}: {fld}: {value!r} is not a kernel version")


def _are_config_words(conf: Path, fld: str, value: str) -> None:
    for word in value.split():
        if not _CONFIG_WORD.fullmatch(word):
            raise UserError(f"{conf}: {fld}: {word!r}: expected CONFIG_NAME or !CONFIG_NAME")


def _is_yes_no(conf: Path, fld: str, value: str) -> None:
    # dkms 3.2.2's check_yes_no_value: "dkms.conf: Error! Unsupported AUTOINSTALL value"
    if value.lower() not in ("", "yes", "no"):
        raise UserError(f"{conf}: {fld}: unsupported value {value!r} (yes, no or empty)")


def _are_names(conf: Path, fld: str, value: str) -> None:
    for word in value.split():
        if not NAME.match(word) or ".." in word:
            raise UserError(f"{conf}: {fld}: {word!r} is not a name")


# per-entry arrays: always named with their index
_ARRAYS = ("MAKE_MATCH", "PATCH_MATCH")


_VALUE_CHECKS: dict[str, Callable[[Path, str, str], None]] = {
    "MAKE_MATCH": _is_regex,
    "PATCH_MATCH": _is_regex,
    "BUILD_EXCLUSIVE_KERNEL": _is_regex,
    "BUILD_EXCLUSIVE_ARCH": _is_regex,
    "BUILD_EXCLUSIVE_KERNEL_MIN": _is_version,
    "BUILD_EXCLUSIVE_KERNEL_MAX": _is_version,
    "OBSOLETE_BY": _is_version,
    "BUILD_EXCLUSIVE_CONFIG": _are_config_words,
    "AUTOINSTALL": _is_yes_no,
    "NO_WEAK_MODULES": _is_yes_no,
    "BUILD_DEPENDS": _are_names,
}


def check_values(conf: Path, d: dict[str, dict[int, str]]) -> None:
    """Each directive's value checked against what it means, before anything uses it
    (issue 22): a regex that compiles, a kernel version where one is compared, CONFIG_
    words, yes/no/empty, package names in BUILD_DEPENDS. A bad one is one line naming the
    file and the field (NAME[i] for MAKE_MATCH and PATCH_MATCH and for several entries,
    else NAME)."""
    for key, check in _VALUE_CHECKS.items():
        values = d.get(key, {})
        for idx, value in values.items():
            plain = idx == 0 and len(values) == 1 and key not in _ARRAYS
            check(conf, key if plain else f"{key}[{idx}]", value)


def deprecations(conf: Path, d: dict[str, dict[int, str]]) -> list[str]:
    """DKMS 3.4's words for the deprecated directives a dkms.conf sets (read_conf's
    deprecated calls): the ignored ones, and OBSOLETE_BY (still honoured). Not CLEAN:
    upstream deprecates a CLEAN that is not ``true``, Debian 13's dkms 3.2.2 does not say
    so (most of its -dkms packages set one), and extmod answers as Debian's."""
    out = [f"Deprecated feature: {key} ({conf})" for key in DEPRECATED if key in d]
    if "OBSOLETE_BY" in d:
        out.append(
            f"Deprecated feature: OBSOLETE_BY ({conf}): use BUILD_EXCLUSIVE_KERNEL_MAX instead"
        )
    return out


def match(d: dict[str, dict[int, str]], key: str, match_key: str, kver: str) -> str:
    """DKMS's MAKE/MAKE_MATCH rule: MAKE[0] unless MAKE_MATCH[0] is set; then the last
    MAKE[i] whose MAKE_MATCH[i] regex matches the kernel release."""
    values, patterns = d.get(key, {}), d.get(match_key, {})
    chosen = "" if patterns.get(0) else values.get(0, "")
    for idx in sorted(values):
        pattern = patterns.get(idx, "")
        if values[idx] and pattern and re.search(ere(pattern), kver):
            chosen = values[idx]
    return chosen


def ere(pattern: str) -> str:
    """bash's =~ takes POSIX extended regexes; Python's syntax covers what dkms.conf files
    use, except bracket classes, which are translated."""
    classes = {
        "[:digit:]": r"\d",
        "[:alpha:]": "a-zA-Z",
        "[:alnum:]": "a-zA-Z0-9",
        "[:space:]": r"\s",
        "[:upper:]": "A-Z",
        "[:lower:]": "a-z",
    }
    for k, v in classes.items():
        pattern = pattern.replace(k, v)
    return pattern


def search(conf: Path, fld: str, pattern: str, text: str) -> bool:
    try:
        return re.search(ere(pattern), text) is not None
    except re.error as e:
        raise UserError(f"{conf}: {fld}: bad regular expression {pattern!r}: {e}") from None


def dkms_ver(text: str) -> str:
    """DKMS's ``VER`` (dkms.in, 3.0.11 to 3.4): each run of digits padded to at least three
    ("6.1.0-18-amd64" -> "006.001.000-018-amd064"), so that the strings compare as versions;
    BUILD_EXCLUSIVE_KERNEL_MIN/MAX are compared with ``[[ < ]]`` / ``[[ > ]]`` on these (read
    in the C locale: byte order, as Python compares)."""
    spaced = re.sub(r"(\d)(\D)", r"\1 \2", re.sub(r"(\D)(\d)", r"\1 \2", text))
    spaced = re.sub(r" (\d) ", r" 00\1 ", f" {spaced} ")
    spaced = re.sub(r" (\d\d) ", r" 0\1 ", spaced)
    return spaced.replace(" ", "")


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading numeric components of a release: "6.1.0-56-amd64" → (6, 1, 0)."""
    m = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()
