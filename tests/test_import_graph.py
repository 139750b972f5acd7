"""The import graph of the product packages: no circles, and nothing imports upward.

Layers, lowest first: ``dataengine.formats`` (recipe, run layout, manifests, shard format, atomic writes),
``dataengine.media`` (decode, clip arithmetic, compositing), ``dataengine.models`` (judge, VLM and VAE
encoders, detector, segmenter, dedup embedder), ``dataengine.steps`` (each step's pure logic),
``dataengine.tools`` (report, diagnostics) and ``dataengine.synthetic`` (tiny models and generated data);
above them ``pipelines`` (the Ray jobs) and ``trainer``, which import ``dataengine`` but not each other.
The graph is read from the source (every ``import``, at the top of a module or inside a function), so a
circle that only a lazy import closes is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("dataengine", "pipelines", "trainer")
LAYERS = (
    "dataengine.formats",
    "dataengine.media",
    "dataengine.models",
    "dataengine.steps",
    "dataengine.tools",
    "dataengine.synthetic",
)
PEERS = {"pipelines": "trainer", "trainer": "pipelines"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, name: str, known: set[str], top_level_only: bool) -> set[str]:
    """The project modules ``path`` imports (a ``from a.b import c`` names ``a.b.c`` when that is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # not its own package
                out.add(target)
    return out


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules), top_level_only) for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.add(other)
                if other == node:
                    break
            if len(component) > 1:
                circles.append(frozenset(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def _layer(module: str) -> int | None:
    for rank, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return rank
    return None


def test_the_checks_can_fail():
    """The circle finder and the layer test on small graphs that break them."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert _circles({"a": {"b"}, "b": set()}) == []
    assert _layer("dataengine.media.video") < _layer("dataengine.models.judge")
    assert _layer("pipelines.stage") is None


def test_no_module_imports_at_the_top_in_a_circle():
    assert _circles(_graph(top_level_only=True)) == []


def test_no_circle_even_through_imports_inside_functions():
    assert _circles(_graph(top_level_only=False)) == []


def test_dataengine_is_flat_no_more():
    loose = sorted(p.name for p in (REPO / "dataengine").glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules outside the role subpackages: {loose}"


@pytest.mark.parametrize("package", PACKAGES)
def test_nothing_imports_upward(package: str):
    upward = []
    for module, imported in _graph(top_level_only=False).items():
        if not module.startswith(package):
            continue
        for other in imported:
            if module.startswith("dataengine") and not other.startswith("dataengine"):
                upward.append(f"{module} -> {other} (dataengine imports no job or trainer code)")
            elif module.split(".")[0] in PEERS and other.startswith(PEERS[module.split(".")[0]]):
                upward.append(f"{module} -> {other} (pipelines and trainer are peers)")
            elif (
                (mine := _layer(module)) is not None
                and (theirs := _layer(other)) is not None
                and theirs > mine
            ):
                upward.append(f"{module} -> {other} ({LAYERS[mine]} is below {LAYERS[theirs]})")
    assert upward == []
