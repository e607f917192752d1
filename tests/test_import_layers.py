"""The modules import one another without a cycle (function-level imports included), so each layer can be
read, tested and replaced on its own."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("gym_vlm_cards", "alfworld_bridge", "vlm_policy")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module's imports of the project's own modules, at any depth of its code, except under
    ``if TYPE_CHECKING:`` (annotations only)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for_types = {id(inner) for node in ast.walk(tree)
                     if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                     for inner in ast.walk(node)}
        imported = set()
        for node in ast.walk(tree):
            if id(node) in for_types:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:  # `from vlm_policy import checkpoints` names the module checkpoints
                    child = f"{node.module}.{alias.name}"
                    imported.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {other for other in imported if other in modules and other != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (each once, as the path from its first module back to it)."""
    found, state = [], {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                found.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other, path + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_project_s_modules_import_one_another_without_a_cycle():
    graph = import_graph()
    assert "vlm_policy.policy" in graph["vlm_policy.agents"]  # the graph sees the imports at all
    assert cycles(graph) == []
