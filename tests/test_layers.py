"""The layers of src/extmod, lowest first (README "Development"): each is a subpackage,
and a module imports only from its own layer or below, so data flows one way and there is
no cycle. A new module goes into one of these subpackages; a new subpackage gets a place
here."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src/extmod"

LAYERS = ("core", "store", "target", "source", "builder", "deploy", "ops", "ui")
TOP = {"__init__", "__main__"}  # extmod/ itself: the version and `python -m extmod`


def _imports(path: Path) -> set[str]:
    """The layers (subpackages) a module imports from."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] != "extmod":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("extmod.")}
    return found - {"__version__"}


def _layer(path: Path) -> str:
    return path.relative_to(SRC).parts[0]


def test_every_module_is_in_a_layer() -> None:
    loose = {p.stem for p in SRC.glob("*.py")} - TOP
    assert not loose, f"modules outside a layer: {sorted(loose)}"
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert packages == set(LAYERS), (packages - set(LAYERS), set(LAYERS) - packages)


def test_no_module_imports_a_higher_layer() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = [
        f"{p.relative_to(SRC)} ({_layer(p)}) imports from {i}"
        for p in sorted(SRC.glob("*/*.py"))
        for i in sorted(_imports(p))
        if i in rank and rank[i] > rank[_layer(p)]
    ]
    assert not wrong, wrong


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    f = tmp_path / "state.py"
    f.write_text("from extmod.ui import cli\nfrom extmod.builder.build import x\n")
    assert _imports(f) == {"ui", "builder"}


def test_the_layers_are_what_the_readme_says() -> None:
    readme = (SRC.parent.parent / "README.md").read_text()
    for name in LAYERS:
        assert f"`{name}/`" in readme, name


def _sizes(root: Path = SRC) -> list[str]:
    """Functions over 60 lines and classes over 250 (issue 14: a reader can hold one)."""
    over = []
    for p in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                limit = 60 if isinstance(node, ast.FunctionDef) else 250
                if size > limit:
                    over.append(f"{p.relative_to(root)}: {node.name} is {size} lines (max {limit})")
    return over


def test_no_function_or_class_too_long_to_read() -> None:
    assert not _sizes(), _sizes()


def test_the_size_check_sees_a_long_function(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f() -> None:\n" + "    pass\n" * 60)
    assert _sizes(tmp_path) == ["m.py: f is 61 lines (max 60)"]
