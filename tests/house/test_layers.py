"""The layers of src/extmod, lowest first (docs/dev/development.md): each is a subpackage,
and a module imports only from its own layer or below, so data flows one way and there is
no cycle. A new module goes into one of these subpackages; a new subpackage gets a place
here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src/extmod"

LAYERS = ("core", "store", "kernel", "source", "builder", "deploy", "ops", "ui")
TOP = {"__init__", "__main__"}  # extmod/ itself: the version and `python -m extmod`


def _imports(path: Path, layer: str | None = None) -> set[str]:
    """The layers (subpackages) a module imports from. ``layer``: the module's own, which a
    relative import (``from . import x``, ``from ..ui import cli``) starts from; a relative
    import that climbs out of it names the layer it climbs into."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            # the packages between extmod/ and the module: store/state.py has one
            below = len(path.relative_to(SRC).parts) - 1 if path.is_relative_to(SRC) else 1
            if node.level <= below - 1 or (node.level == below and layer is not None):
                found.add(layer or "?")  # inside its own layer (or its own subpackage)
            elif node.level == below + 1:  # from extmod itself: the next name is a layer
                found |= (
                    {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
                )
            else:
                found.add(f"beyond extmod ({'.' * node.level}{node.module or ''})")
        elif isinstance(node, ast.ImportFrom) and node.module:
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


def _modules(root: Path = SRC) -> list[Path]:
    """Every module of the package, at any depth (a nested subpackage included)."""
    return sorted(p for p in root.rglob("*.py") if p.parent != root)


def test_every_module_is_in_a_layer() -> None:
    loose = {p.stem for p in SRC.glob("*.py")} - TOP
    assert not loose, f"modules outside a layer: {sorted(loose)}"
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert packages == set(LAYERS), (packages - set(LAYERS), set(LAYERS) - packages)


def _upward(root: Path = SRC) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [
        f"{p.relative_to(root)} ({p.relative_to(root).parts[0]}) imports from {i}"
        for p in _modules(root)
        for i in sorted(_imports(p, p.relative_to(root).parts[0]))
        if i in rank and rank[i] > rank[p.relative_to(root).parts[0]]
    ]


def test_no_module_imports_a_higher_layer() -> None:
    wrong = _upward()
    assert not wrong, wrong


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    f = tmp_path / "state.py"
    f.write_text("from extmod.ui import cli\nfrom extmod.builder.build import x\n")
    assert _imports(f) == {"ui", "builder"}


def test_the_check_sees_relative_and_nested_imports(monkeypatch: object) -> None:
    """Issue 24: a planted ``from ..ui import cli`` in store/ and a nested core/sub/x.py
    importing ui both passed."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "extmod"
        for layer in LAYERS:
            (root / layer).mkdir(parents=True)
            (root / layer / "__init__.py").write_text("")
        (root / "store/state.py").write_text("from ..ui import cli\nfrom . import schema\n")
        (root / "core/sub").mkdir()
        (root / "core/sub/__init__.py").write_text("")
        (root / "core/sub/x.py").write_text("from extmod.ui import cli\nfrom ... import ops\n")
        (root / "ui/ok.py").write_text("from ..core import paths\nfrom .cli import main\n")
        global SRC
        saved, SRC = SRC, root
        try:
            wrong = _upward(root)
        finally:
            SRC = saved
    assert wrong == [
        "core/sub/x.py (core) imports from ops",
        "core/sub/x.py (core) imports from ui",
        "store/state.py (store) imports from ui",
    ], wrong


def test_the_layers_are_what_the_docs_say() -> None:
    """Every layer and every module of it is named in the layer table of
    docs/dev/development.md, in its row."""
    readme = (SRC.parent.parent / "docs" / "dev" / "development.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`/"): line
        for line in readme.splitlines()
        if line.startswith("| `") and "/` |" in line
    }
    assert set(LAYERS) <= set(rows), set(LAYERS) - set(rows)
    missing = [
        f"{_layer(p)}/{p.stem}"
        for p in _modules()
        if p.stem != "__init__" and f"`{p.stem}`" not in rows[_layer(p)]
    ]
    assert not missing, (
        f"modules the layer table (docs/dev/development.md) does not name: {missing}"
    )


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


def test_registering_a_package_does_not_go_through_the_builder() -> None:
    """Issue 24: ops/registry reached builder/build.py for the dkms.conf evaluation context,
    which source/context.py owns now."""
    assert "builder" not in _imports(SRC / "ops/registry.py", "ops")


def test_no_layer_is_named_like_build_output() -> None:
    """Issue 24: tools that read a tree (ripgrep's ignore files, editors, indexers) skip a
    folder named like build output; the layer that was ``target/`` hid every module in it."""
    outputs = {"target", "build", "dist", "out", "output", "bin", "obj"}
    assert not outputs & {p.name for p in SRC.iterdir() if p.is_dir()}


def test_only_paths_and_state_name_places_in_the_state_dir() -> None:
    """Issue 24: 16 ``state_dir / "…"`` joins in 11 modules. Every location under the state
    dir has a name in core/paths.py (build dirs, keys, view, memos) or store/state.py (the
    records); nothing else joins onto the state dir."""
    join = re.compile(r"state_dir\s*/|\bstate\.dir\s*/")
    owners = {"core/paths.py", "store/state.py"}
    found = [
        f"{p.relative_to(SRC)}:{n}"
        for p in _modules()
        if str(p.relative_to(SRC)) not in owners
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if join.search(line)
    ]
    assert not found, found


def test_the_command_lines_reach_the_engine_only_through_ops() -> None:
    """Issue 24: ``ui/`` (both command lines) parses and renders; what it runs is an ops
    entry (ops/commands.py), so it imports nothing of builder, deploy or store."""
    wrong = [
        f"{p.relative_to(SRC)} imports from {i}"
        for p in _modules()
        if _layer(p) == "ui"
        for i in sorted(_imports(p, "ui") & {"builder", "deploy", "store"})
    ]
    assert not wrong, wrong


def _named_imports(path: Path) -> set[str]:
    """The extmod modules a file imports, dotted (``store.shared``), however it names them."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("extmod."):
            base = node.module.removeprefix("extmod.")
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("extmod.") for a in node.names}
    return found


def test_the_build_stores_have_one_owner() -> None:
    """Issue 34: builder/reuse.py owns the build stores; no other module of the builder or
    of ops reaches the shared store's engines or its objects, nor the local store's put
    and get (status, caches and clean may list and prune it)."""
    owners = {SRC / "builder/reuse.py", *(SRC / "store").glob("*.py")}
    wrong = [
        f"{p.relative_to(SRC)} imports {name}"
        for p in _modules()
        if p not in owners
        for name in sorted(_named_imports(p))
        if name in ("store.remote", "store.shared")
    ]
    assert not wrong, wrong
    for p in [*(SRC / "builder").glob("*.py"), *(SRC / "ops").glob("*.py")]:
        if p not in owners:
            text = p.read_text()
            assert "builds.get(" not in text and "builds.put(" not in text, p


def test_no_module_over_600_lines() -> None:
    """Issue 34: a module a newcomer can read whole (build.py was 1,087 lines, doing 17
    jobs; package.py 813; cli.py 790; config.py 666)."""
    over = [
        f"{p.relative_to(SRC)}: {n} lines"
        for p in sorted(SRC.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > 600
    ]
    assert not over, over
