"""The package stays a house the next engineer can live in: imports run one way, names are unique.

Read from the source with ``ast``, so the checks see function-level imports too (a lazy import
that closes a cycle is still a cycle for a reader).
"""

from __future__ import annotations

import ast
import collections
import pathlib

SOURCE = pathlib.Path(__file__).resolve().parent.parent / "operator"
PACKAGE = SOURCE / "mlops_operator"


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(SOURCE).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The package's modules ``name`` imports (a submodule, not its package, when one is named)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            named = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
            found |= named or ({base} & modules.keys())
    found.discard(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
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
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["mlops_operator.cli"], "the import reader found nothing: it is broken, not the package clean"
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_name_says_what_it_holds_without_its_folder() -> None:
    names = collections.Counter(
        path.name for path in PACKAGE.rglob("*.py") if path.name not in ("__init__.py", "__main__.py")
    )
    assert [name for name, count in names.items() if count > 1] == []


#: Where writing the environment is the only way in: BentoML starts its own worker processes,
#: which receive the server's settings through their environment; MLflow's client reads its HTTP
#: retry settings only from the environment.
ENVIRONMENT_HANDOFFS = {"mlops_operator/serving/hosts.py", "mlops_operator/registry/mlflow_registry.py"}


def _global_writes(path: pathlib.Path) -> list[str]:
    """``global`` statements and writes to ``os.environ`` in one module (line numbers)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Global):
            found.append(f"{node.lineno}: global {', '.join(node.names)}")
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "os.environ":
                found.append(f"{node.lineno}: {ast.unparse(target)} = ...")
        if isinstance(node, ast.Call) and ast.unparse(node.func) in (
            "os.environ.update",
            "os.environ.setdefault",
        ):
            found.append(f"{node.lineno}: {ast.unparse(node.func)}(...)")
    return found


def test_no_module_keeps_collaborators_or_settings_in_globals() -> None:
    """Clients and settings are handed in (kopf's memo), never swapped in module globals or the environment."""
    offenders = {
        str(path.relative_to(SOURCE)): writes
        for path in PACKAGE.rglob("*.py")
        if (writes := _global_writes(path)) and str(path.relative_to(SOURCE)) not in ENVIRONMENT_HANDOFFS
    }
    assert offenders == {}


def test_the_global_reader_sees_globals(tmp_path: pathlib.Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n_k = None\ndef f():\n    global _k\n    os.environ['X'] = '1'\n")
    assert _global_writes(module) == ["4: global _k", "5: os.environ['X'] = ..."]
