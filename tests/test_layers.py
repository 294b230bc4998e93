"""The package's import layers (docs/architecture.md, "Layers"), read from the AST of every module in src/.

Every ``import`` / ``from ... import`` of a ``fasterrcnn`` module counts, at module level, inside functions
and under ``if TYPE_CHECKING``: a module may import its own layer or a lower one, and no chain of imports
may lead back to where it started.
"""

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fasterrcnn"

# Lowest first; a module may import only from its own layer or those before it.
LAYERS = [
    ("ops", "errors", "visualize", "paths", "reading"),  # paths, reading: the output and input-file rules
    ("config", "io", "device"),
    ("data", "evaluation", "pretrained"),
    ("modeling",),
    ("inference", "engine", "deploy"),
    ("detector",),
    ("runs",),
    ("serve",),
    ("cli",),
    ("__init__", "__main__"),  # the package's lazy names and ``python -m fasterrcnn``
]
LAYER_OF = {part: index for index, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
# Names assigned in the package's own __init__ (e.g. __version__): importing them runs nothing that
# importing any fasterrcnn module does not run already, so they are no edge to the top layer.
PACKAGE_CONSTANTS = {
    target.id
    for node in ast.parse((PACKAGE / "__init__.py").read_text()).body if isinstance(node, ast.Assign)
    for target in node.targets if isinstance(target, ast.Name)
}


def top_part(module: str) -> str:
    """fasterrcnn.data.voc -> "data"; fasterrcnn (the package) -> "__init__"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    return LAYER_OF[top_part(module)]


def imported_modules(module: str) -> set[str]:
    """The fasterrcnn modules ``module`` imports anywhere in its file (``from a import b`` counts as
    ``a.b`` when b is a module, else as ``a``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names if not (base == "fasterrcnn" and alias.name in PACKAGE_CONSTANTS)
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # e.g. ``import fasterrcnn.data.voc.x``: the nearest module
                name = name.rpartition(".")[0]
            if name.startswith("fasterrcnn") and name != module:
                found.add(name)
    return found


GRAPH = {module: imported_modules(module) for module in MODULES}


def test_every_module_has_a_layer():
    assert "fasterrcnn.detector" in MODULES and "fasterrcnn.cli.export" in MODULES
    assert {top_part(module) for module in MODULES} <= set(LAYER_OF)


def test_imports_go_downward_only():
    upward = sorted(
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in GRAPH.items() for target in targets if layer(target) > layer(module)
    )
    assert upward == []


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def test_no_import_circle():
    assert find_circle(GRAPH) is None


@pytest.mark.parametrize(
    "graph, circle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": set(), "c": {"a", "b"}}, None),
    ],
)
def test_find_circle(graph, circle):
    assert find_circle(graph) == circle


def test_no_script_in_benchmarks_shadows_a_standard_module():
    """``python benchmarks/X.py`` puts benchmarks/ first on sys.path: a script named like a standard module (it was
    ``profile.py``) replaces that module for every import in the process (torch's optimizers import cProfile, which
    imports ``profile``)."""
    scripts = {path.stem for path in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")}
    assert scripts and not scripts & set(sys.stdlib_module_names)
