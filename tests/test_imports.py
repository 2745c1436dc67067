"""No import cycle between the project's modules, lazy imports (inside functions) included."""

import ast
import graphlib

from tests.conftest import REPO

PACKAGES = ("fedguard", "strategies")


def project_modules() -> dict[str, ast.Module]:
    mods = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = (ast.parse(path.read_text()), path.name == "__init__.py")
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source (a name imported from
    a package counts as the submodule when there is one, else the package)."""
    mods = project_modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        return next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in mods), None)

    graph = {m: set() for m in mods}
    for m, (tree, is_pkg) in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = m.split(".") if is_pkg else m.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] or [base]
            else:
                continue
            graph[m] |= {r for r in map(resolve, targets) if r is not None and r != m}
    return graph


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and graph["fedguard.server_app"]  # the walk found the project
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_the_check_sees_lazy_imports():
    graph = import_graph()
    assert "fedguard.simulation" in graph["fedguard.cli"]  # imported inside a function only
