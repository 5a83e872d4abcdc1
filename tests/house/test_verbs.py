"""The one verb table (core/verbs.py, issue 34): each place that names verbs takes them from
it, and a verb added in one place only is found."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from extmod.core import settings, verbs
from extmod.ops import commands
from extmod.ui import argv, cli
from extmod.ui.dkms import args as dkms_args
from extmod.ui.dkms import cli as dkms_cli


def _parser_verbs(p: argparse.ArgumentParser) -> list[str]:
    (sub,) = (a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def mismatches() -> list[str]:
    """Where a place that names verbs and the table differ, one line each."""
    out = []

    def same(where: str, have: object, want: object) -> None:
        if have != want:
            out.append(f"{where}: {have} != the table's {want}")

    table = verbs.extmod_verbs()
    try:
        parsed = _parser_verbs(argv.parser())
    except KeyError as e:  # a verb the table does not have
        out.append(f"ui/argv.py: verb {e} is not in the table")
        parsed = list(table)
    same("extmod's parser", parsed, list(table))
    same("ui/cli.py _DOORS", sorted(cli._DOORS), sorted(table))
    same(
        "ops/commands.py _ACTIONS",
        sorted(commands._ACTIONS),
        sorted(verbs.extmod_names(lifecycle=True)),
    )
    same("dkms's ACTIONS", dkms_args.ACTIONS, verbs.dkms_actions())
    # status and generate_mok are answered before the bracket; every other action runs in it
    same(
        "ui/dkms/cli.py _DO",
        sorted({*dkms_cli._DO, "status", "generate_mok"}),
        sorted(verbs.dkms_actions()),
    )
    subverbs = {f"cache {a}" for a in ("show", "prune")}
    for s in settings.SETTINGS:
        for v in s.verbs:
            if v not in table and v not in subverbs:
                out.append(f"settings {s.key}: verb {v!r} is not in the table")
    return out


def test_every_place_takes_its_verbs_from_the_table() -> None:
    assert mismatches() == []


def test_each_row_has_a_name_and_help() -> None:
    for column in (verbs.extmod_verbs(), verbs.dkms_actions()):
        assert len(column) == len(set(column)), column
    for v in verbs.TABLE:
        assert v.extmod or v.dkms
        assert v.help and not v.help.endswith(".")
        assert bool(v.usage) == bool(v.extmod), v  # extmod's verbs are in the reference
    assert verbs.names(jobs=True) == {
        "build",
        "install",
        "autoinstall",
        "kernel-postinst",
        "kernel_postinst",
    }
    assert commands.VERIFY_AFTER == {"autoinstall", "kernel-postinst", "kernel_postinst"}
    assert commands.OWN_INITRAMFS_HOOK == {"kernel-postinst", "kernel_postinst"}
    with pytest.raises(KeyError):
        verbs.of("frobnicate")


def test_a_verb_added_in_one_place_only_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a row with no door, a door with no row."""
    extra = verbs.Verb("frobnicate", "frobnicate", "do a thing", (("extmod frobnicate", "x"),))
    monkeypatch.setattr(verbs, "TABLE", (*verbs.TABLE, extra))
    found = mismatches()
    assert any(line.startswith("extmod's parser") for line in found), found
    assert any(line.startswith("ui/cli.py _DOORS") for line in found), found
    assert any(line.startswith("ui/dkms/cli.py _DO") for line in found), found
    monkeypatch.undo()

    monkeypatch.setitem(cli._DOORS, "frobnicate", cli._doctor)
    assert [line for line in mismatches() if line.startswith("ui/cli.py _DOORS")]
    monkeypatch.undo()

    lifecycle = dataclasses.replace(verbs.of("clean"), lifecycle=True)
    rows = tuple(lifecycle if v.extmod == "clean" else v for v in verbs.TABLE)
    monkeypatch.setattr(verbs, "TABLE", rows)
    assert [line for line in mismatches() if line.startswith("ops/commands.py _ACTIONS")]


def test_the_reference_is_made_from_the_table() -> None:
    ref = verbs.reference_markdown()
    for v in verbs.TABLE:
        for synopsis, _ in v.usage:
            assert synopsis.replace("|", "\\|") in ref
        if v.dkms:
            assert f"`{v.dkms}`" in ref
