"""The rules that keep the house easy to live in, read from the source (see docs/architecture.md).

Every import of the package's own modules is collected from the syntax tree of every module, so a
rule broken anywhere (a new import circle, a model file reaching into the engine, an import hidden
inside a function) fails here with the file and the import named.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "flowaction"
MAX_LINES = 400

#: what each part of the package may import of the package (prefixes); a part not listed may import anything
#: below the commands. Foundations import only foundations.
FOUNDATIONS = ("flowaction.config", "flowaction.checkpoint", "flowaction.warp", "flowaction.triplets", "flowaction.files")
ALLOWED = {
    "flowaction.config": (),
    "flowaction.checkpoint": (),
    "flowaction.warp": (),
    "flowaction.triplets": (),
    "flowaction.files": (),
    "flowaction.models": ("flowaction.models", "flowaction.warp", "flowaction.triplets", "flowaction.config",
                          "flowaction.checkpoint"),
    "flowaction.losses": ("flowaction.loss_variants", *FOUNDATIONS),
    "flowaction.loss_variants": FOUNDATIONS,
    "flowaction.flow": ("flowaction.flow", *FOUNDATIONS),
    "flowaction.data": ("flowaction.data", "flowaction.flow", *FOUNDATIONS),
    "flowaction.speedups": ("flowaction.speedups", "flowaction.models", *FOUNDATIONS),
}
#: only these may defer an import of the package into a function (start-up time of the command line,
#: and ``flowaction.Recognizer`` without importing torch for ``import flowaction``)
DEFERRING = {"flowaction.cli", "flowaction"}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported package module, line, at module level)`` of every import of the package in a file."""
    tree = ast.parse(path.read_text(), str(path))
    module_level = {id(node) for node in tree.body}
    modules = _modules()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from flowaction.engine import distributed" imports the module flowaction.engine.distributed
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            if name == "flowaction" or name.startswith("flowaction."):
                found.append((name, node.lineno, id(node) in module_level))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {imported for imported, _, _ in _imports(path) if imported in modules and imported != name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_rules_see_the_package():
    graph = _graph()
    assert {"flowaction.cli", "flowaction.engine.fit", "flowaction.models.build"} <= set(graph)
    assert "flowaction.models.build" in graph["flowaction.engine.fit"]
    assert "flowaction.engine.distributed" in graph["flowaction.commands.train"]  # "from pkg import module"


def test_there_is_no_import_circle():
    assert _cycles(_graph()) == []


def test_the_circle_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_what_lies_below_it(part):
    wrong = []
    for name, path in _modules().items():
        if name != part and not name.startswith(part + "."):
            continue
        for imported, line, _ in _imports(path):
            if not any(imported == allowed or imported.startswith(allowed + ".") for allowed in ALLOWED[part]):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}")
    assert wrong == []


def test_no_building_block_imports_a_command():
    wrong = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}"
             for name, path in _modules().items()
             if not name.startswith(("flowaction.commands", "flowaction.cli", "flowaction.__main__"))
             for imported, line, _ in _imports(path)
             if imported.startswith(("flowaction.commands", "flowaction.cli"))]
    assert wrong == []


def test_the_package_imports_stand_at_the_top_of_each_module():
    hidden = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported} inside a function"
              for name, path in _modules().items() if name not in DEFERRING
              for imported, line, top in _imports(path) if not top]
    assert hidden == []


def test_only_the_command_line_parses_arguments():
    readers = [str(path.relative_to(PACKAGE.parent)) for name, path in _modules().items()
               if name != "flowaction.cli" and ("argparse" in path.read_text() or "sys.argv" in path.read_text())]
    assert readers == []


def test_no_file_is_over_the_length_a_reader_takes_in():
    long = {str(path.relative_to(PACKAGE.parent)): lines for path in _modules().values()
            if (lines := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
