"""The man page and the shell completions: generated from the parser and in sync with it;
the man page renders without a warning; bash and zsh complete verbs, options, choices,
kernels and package names."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from conftest import REPO
from extmod.ui import docgen


def test_generated_files_are_in_sync_with_the_parser() -> None:
    for rel, make in docgen.FILES.items():
        assert (REPO / rel).read_text() == make(), (
            f"{rel} is stale: run .venv/bin/python -m extmod.ui.docgen ."
        )


def test_man_page_renders_without_warnings() -> None:
    res = subprocess.run(
        ["man", "--warnings", "-l", str(REPO / "man/extmod.8")],
        env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat", "PAGER": "cat"},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr
    text = re.sub(r".\x08", "", res.stdout)
    for verb in ("autoinstall", "import-dkms", "install-hooks", "doctor", "kernel-postinst"):
        assert f"\n   {verb}" in text
    assert "EXIT STATUS" in text and "thinlto.max_size" in text and "EXTMOD_ROOT" in text


def _bash_complete(line: str, root: Path) -> list[str]:
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    script = (
        f"source {REPO / 'completions/extmod.bash'}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n_extmod\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    )
    res = subprocess.run(
        ["bash", "--norc", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "EXTMOD_ROOT": str(root)},
        check=True,
    )
    return sorted(w for w in res.stdout.split("\n") if w)


def _fake_root(tmp: Path) -> Path:
    (tmp / "lib/modules/6.1.0-56-amd64").mkdir(parents=True)
    (tmp / "lib/modules/6.1.192-lto").mkdir(parents=True)
    (tmp / "var/lib/extmod/packages/v4l2loopback/0.12.7").mkdir(parents=True)
    return tmp


def test_bash_completion(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    assert _bash_complete("extmod aut", root) == ["autoinstall"]
    assert _bash_complete("extmod import", root) == ["import-dkms"]
    assert _bash_complete("extmod build --thinlto-cache", root) == [
        "--thinlto-cache",
        "--thinlto-cache-dir",
    ]
    assert _bash_complete("extmod build --thinlto-cache ", root) == ["auto", "off", "on"]
    assert _bash_complete("extmod install -k ", root) == ["6.1.0-56-amd64", "6.1.192-lto"]
    assert _bash_complete("extmod install-hooks --for p", root) == ["pacman"]
    assert _bash_complete("extmod remove v4l", root) == ["v4l2loopback"]
    assert _bash_complete("extmod kernel-postinst 6.1.1", root) == ["6.1.192-lto"]
    assert _bash_complete("extmod cache p", root) == ["prune"]


def test_zsh_completion_in_a_terminal(tmp_path: Path) -> None:
    """A real interactive zsh (in tmux) with the completion on its fpath: TAB completes."""
    root = _fake_root(tmp_path)
    fpath = tmp_path / "fpath"
    fpath.mkdir()
    (fpath / "_extmod").write_text((REPO / "completions/_extmod").read_text())
    zdot = tmp_path / "zdot"
    zdot.mkdir()
    (zdot / ".zshrc").write_text(
        f"fpath=({fpath} $fpath)\nautoload -Uz compinit\n"
        f"compinit -u -d {tmp_path}/zcompdump\nPS1='ZSH>'\n"
        f"export EXTMOD_ROOT={root}\n"
    )
    sock = f"extmod-zsh-{os.getpid()}"
    tmux = ["tmux", "-L", sock]
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "150", "-y", "40", "-e", f"ZDOTDIR={zdot}", "zsh", "-i"],
        check=True,
    )

    def typed(keys: str) -> str:
        subprocess.run([*tmux, "send-keys", "-t", "0", "C-u"], check=True)
        subprocess.run([*tmux, "send-keys", "-t", "0", "-l", keys], check=True)
        subprocess.run([*tmux, "send-keys", "-t", "0", "Tab"], check=True)
        time.sleep(1.0)
        shot = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "0"], capture_output=True, text=True, check=True
        ).stdout
        return [ln for ln in shot.splitlines() if ln.startswith("ZSH>")][-1].rstrip()

    try:
        deadline = time.monotonic() + 20
        while (
            "ZSH>"
            not in subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", "0"], capture_output=True, text=True
            ).stdout
        ):
            assert time.monotonic() < deadline, "zsh did not start"
            time.sleep(0.2)
        assert typed("extmod autoin") == "ZSH>extmod autoinstall"
        assert typed("extmod import-d") == "ZSH>extmod import-dkms"
        assert typed("extmod install -k 6.1.19") == "ZSH>extmod install -k 6.1.192-lto"
        assert typed("extmod remove v4l") == "ZSH>extmod remove v4l2loopback"
        assert (
            typed("extmod install-hooks --for kernel-")
            == "ZSH>extmod install-hooks --for kernel-install"
        )
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)


def test_the_parity_table_is_the_recorded_run() -> None:
    """Issue 22: the table was pasted by hand. It is rendered from tests/parity-runs.json
    (``python tests/parity.py --record DIR`` writes both) into docs/dev/parity.md."""
    import parity

    text = parity.PARITY_DOC.read_text()
    for recorded in ("parity-runs.json", "parity13-runs.json"):  # Debian 12 and 13
        path = REPO / "tests" / recorded
        assert parity.readme_table(text, path) == parity.recorded_table(path), (
            f"docs/dev/parity.md's table differs from tests/{recorded}: run "
            f"parity.write_readme(Path('tests/{recorded}')) in tests/, or record a new run"
        )


# -- docs/ (issue 34) -----------------------------------------------------------------------
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _docs() -> list[Path]:
    return [
        REPO / "README.md",
        REPO / "tests" / "README.md",
        *sorted((REPO / "docs").rglob("*.md")),
    ]


def _slugs(text: str) -> set[str]:
    """The anchors of a markdown file's headings, as GitHub makes them."""
    out, fence = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"^#{1,6} (.*)$", line)):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def _links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_every_link_of_the_docs_leads_to_a_file_and_heading() -> None:
    broken = []
    for doc in _docs():
        for target in _links(doc.read_text()):
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}: no such file")
            elif anchor and anchor not in _slugs(dest.read_text()):
                broken.append(f"{doc.relative_to(REPO)}: {target}: no such heading")
    assert broken == []


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    doc = tmp_path / "a.md"
    doc.write_text("# Top\n\n[x](#top) [y](#nowhere) [z](b.md) [w](https://example.org)\n")
    assert _links(doc.read_text()) == ["#top", "#nowhere", "b.md"]
    assert "top" in _slugs(doc.read_text()) and "nowhere" not in _slugs(doc.read_text())


def test_the_generated_blocks_of_the_docs_are_in_step() -> None:
    from extmod.ui import docblocks

    docs = docblocks.documents(REPO)
    used = {name for d in docs for name in docblocks.names_in(d.read_text())}
    assert used == set(docblocks.BLOCKS), set(docblocks.BLOCKS) - used
    for d in docs:
        assert docblocks.refresh(d.read_text()) == d.read_text(), (
            f"{d.relative_to(REPO)} is stale: run .venv/bin/python -m extmod.ui.docgen ."
        )
    stale = "<!-- generated: verbs (python -m extmod.ui.docgen .) -->\nold\n<!-- end of verbs -->"
    assert docblocks.refresh(stale) != stale


def test_the_readme_is_short_and_leads_to_every_doc() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    linked = {(REPO / t.partition("#")[0]).resolve() for t in _links(readme)}
    unlinked = [
        str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md") if p.resolve() not in linked
    ]
    assert unlinked == [], f"docs the README does not link: {unlinked}"
    assert max(len(line) for line in readme.splitlines() if not line.startswith("|")) < 200


def test_the_map_of_the_tests_names_every_test_file_in_its_dir() -> None:
    rows = {
        line.split("|")[1].strip().strip("`/"): line
        for line in (REPO / "tests" / "README.md").read_text().splitlines()
        if line.startswith("| `") and "/` |" in line
    }
    dirs = {p.parent.name for p in (REPO / "tests").glob("*/test_*.py")}
    assert set(rows) == dirs, set(rows) ^ dirs
    unmapped = [
        f"{p.parent.name}/{p.name}"
        for p in (REPO / "tests").glob("*/test_*.py")
        if f"`{p.stem}`" not in rows[p.parent.name]
    ]
    assert unmapped == []
    assert not list((REPO / "tests").glob("test_*.py")), "a test file outside a feature dir"
