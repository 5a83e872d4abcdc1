"""The layers of src/extmod, lowest first (README "Development"): a module imports only
from its own layer or below, so data flows one way and there is no cycle. A new module
must be placed in a layer here."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src/extmod"

LAYERS = (
    ("core", ("errors", "paths", "atomic", "run", "faults", "config", "digest", "progress")),
    ("state", ("state", "status")),
    ("target kernel", ("kernel", "toolchain", "thinlto", "signing", "finish", "modtree")),
    ("source package", ("package",)),
    ("build", ("build", "loadcheck", "schedule")),
    ("install", ("install",)),
    (
        "operations",
        (
            "facts",
            "lifecycle",
            "freshness",
            "registry",
            "installer",
            "plan",
            "migrate",
            "hooks",
            "doctor",
        ),
    ),
    ("ui", ("cli", "dkmscli", "docgen")),
)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "extmod":
                found |= {a.name for a in node.names}
            elif node.module.startswith("extmod."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("extmod.")}
    return found - {"__version__"}


def test_every_module_has_a_layer() -> None:
    placed = {m for _, mods in LAYERS for m in mods}
    modules = {p.stem for p in SRC.glob("*.py")} - {"__init__", "__main__"}
    assert modules == placed, (modules - placed, placed - modules)


def test_no_module_imports_a_higher_layer() -> None:
    rank = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    wrong = [
        f"{p.stem} ({LAYERS[rank[p.stem]][0]}) imports {i} ({LAYERS[rank[i]][0]})"
        for p in sorted(SRC.glob("*.py"))
        if p.stem in rank
        for i in sorted(_imports(p))
        if i in rank and rank[i] > rank[p.stem]
    ]
    assert not wrong, wrong


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    f = tmp_path / "state.py"
    f.write_text("from extmod import cli\nfrom extmod.build import x\n")
    assert _imports(f) == {"cli", "build"}
