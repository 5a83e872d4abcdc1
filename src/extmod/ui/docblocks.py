"""The generated parts of ``docs/``: each block between a ``<!-- generated: NAME -->`` line
and its ``<!-- end of NAME -->`` is made again from where the fact lives, so the docs cannot
drift from the code (``tests/house/test_docs.py`` checks every block):

- ``verbs``: the verb table (``core/verbs.py``);
- ``config``: the settings table (``core/settings.py``);
- ``exit-codes``: ``core/errors.py``'s ``EXIT_CODES``;
- ``files``: the state tree's layout, from ``store/state.py``'s docstring (read as text:
  ``ui/`` does not import ``store/``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

from extmod.core import config, verbs
from extmod.core.errors import EXIT_CODES

_STATE_PY = Path(__file__).resolve().parent.parent / "store" / "state.py"


def exit_codes() -> str:
    lines = ["| code | meaning |", "|---|---|"]
    lines += [f"| {code} | {text} |" for code, text in EXIT_CODES]
    return "\n".join(lines)


def files() -> str:
    """The indented layout block of the state tree's docstring, as a code block."""
    doc = ast.get_docstring(ast.parse(_STATE_PY.read_text())) or ""
    block = doc.split("\n\n")[2]  # summary, "Layout under ...:", the block
    return "```\n" + "\n".join(line[4:] for line in block.splitlines()) + "\n```"


BLOCKS: dict[str, Callable[[], str]] = {
    "verbs": verbs.reference_markdown,
    "config": config.reference_markdown,
    "exit-codes": exit_codes,
    "files": files,
}

_BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[a-z-]+) \(python -m extmod\.ui\.docgen \.\) -->\n)"
    r"(?P<body>.*?)"
    r"(\n<!-- end of (?P=name) -->)",
    re.S,
)


def names_in(text: str) -> list[str]:
    return [m.group("name") for m in _BLOCK.finditer(text)]


def refresh(text: str) -> str:
    """``text`` with each generated block made again (an unknown name: KeyError)."""
    return _BLOCK.sub(lambda m: m.group(1) + BLOCKS[m.group("name")]() + m.group(4), text)


def documents(top: Path) -> list[Path]:
    """The docs with a generated block."""
    return sorted(p for p in (top / "docs").rglob("*.md") if names_in(p.read_text()))
