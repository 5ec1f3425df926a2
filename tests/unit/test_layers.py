"""The import layers of liteq and liteqd, read from the source with `ast`.

liteq (the library an app imports) never imports liteqd (the daemon), except
through the one shim module kept for liteq 0.2 code; and no module imports itself
back through a chain of other modules that run. Every import counts: at module level,
inside functions, relative ones, and `importlib.import_module("name")` with a literal
name. The one difference: an import under `if TYPE_CHECKING:` never runs, so it counts
for the layers (a type from liteqd in liteq is still a dependency) but not for cycles
(a module and the annotations of the one it imports may name each other).
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("liteq", "liteqd")

# The one liteq module allowed to reach liteqd (lazily): the liteq 0.2 shims.
SHIM_MODULES: frozenset[str] = frozenset({"liteq.compat"})

# Cycles tolerated while they are being removed, each as the set of modules that import each
# other (none today). A listed cycle that no longer exists fails the test, so the list shrinks.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()

# liteq modules that still import liteqd (none today; the list only shrinks).
KNOWN_LIBRARY_TO_DAEMON: frozenset[str] = frozenset()


def module_name(root: Path, path: Path) -> str:
    """The dotted module name of `path` under `root` (a package's __init__ is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a relative import `from .target` written in `current`."""
    if level == 0:
        return target or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _is_type_checking(node: ast.AST) -> bool:
    """True for `if TYPE_CHECKING:` and `if typing.TYPE_CHECKING:`."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _nodes(tree: ast.AST, runtime_only: bool) -> Iterator[ast.AST]:
    """Every node of the tree; without the bodies of `if TYPE_CHECKING:` when runtime_only."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if runtime_only and isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imported_names(source: str, current: str, is_package: bool,
                   runtime_only: bool = False) -> Iterator[str]:
    """Every module name the source imports, wherever the import statement is (only the
    imports that can run, with runtime_only)."""
    for node in _nodes(ast.parse(source), runtime_only):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(current, is_package, node.level, node.module)
            for alias in node.names:
                # pkg.name: the submodule when name is one, else pkg itself (import_graph
                # cuts a name that is no module back to its package).
                yield f"{base}.{alias.name}"
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and _is_import_module(node.func)):
            yield node.args[0].value


def _is_import_module(func: ast.expr) -> bool:
    """True for `importlib.import_module` and a bare `import_module`."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id == "import_module"


def import_graph(root: Path, packages: tuple[str, ...],
                 runtime_only: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports (names not found as modules are dropped,
    and `from pkg import name` of a plain attribute counts as importing pkg)."""
    files = {module_name(root, p): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for target in imported_names(path.read_text(encoding="utf-8"), name, is_package,
                                     runtime_only):
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _without_parent_package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edges from a module to the packages that contain it: importing a.b.c runs
    a/__init__ and a/b/__init__ first anyway, so `from . import x` in a package's module is
    not a cycle in the sense that matters (an __init__ that re-exports its modules)."""
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path through each group of modules that import each other."""
    return [_cycle_path(graph, c) for c in find_components(graph)]


def find_components(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module, by their first
    member (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = []
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        work.append((start, iter(sorted(graph.get(start, ())))))
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return sorted(components, key=min)


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One shortest cycle through the component's first module (first in sort order)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return sorted(component)


def _cycles_text(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(c) for c in cycles)


def project_graph(runtime_only: bool = False) -> dict[str, set[str]]:
    """The import graph of liteq and liteqd as they are in this tree."""
    return _without_parent_package_edges(import_graph(ROOT, PACKAGES, runtime_only))


def test_liteq_never_imports_liteqd() -> None:
    graph = project_graph()
    offenders = sorted(
        f"{m} -> {t}" for m, ts in graph.items() if m.split(".")[0] == "liteq"
        and m not in SHIM_MODULES | KNOWN_LIBRARY_TO_DAEMON
        for t in ts if t.split(".")[0] == "liteqd")
    assert not offenders, "liteq imports liteqd outside liteq.compat:\n" + "\n".join(offenders)
    stale = sorted(m for m in KNOWN_LIBRARY_TO_DAEMON
                   if not any(t.split(".")[0] == "liteqd" for t in graph.get(m, ())))
    assert not stale, f"no longer import liteqd, drop from KNOWN_LIBRARY_TO_DAEMON: {stale}"


def test_no_import_cycles() -> None:
    graph = project_graph(runtime_only=True)
    components = [frozenset(c) for c in find_components(graph)]
    new = [_cycle_path(graph, set(c)) + [f"(all: {', '.join(sorted(c))})"]
           for c in components if c not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + _cycles_text(new)
    gone = [sorted(k) for k in KNOWN_CYCLES if k not in components]
    assert not gone, f"these cycles are gone, drop them from KNOWN_CYCLES: {gone}"


def _plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_checker_finds_a_planted_cycle(tmp_path: Path) -> None:
    _plant(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\n",
        "pkg/b.py": "def f():\n    from .sub import c\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "import importlib\nimportlib.import_module('pkg.a')\n",
        "pkg/d.py": "import pkg.a\n",   # imports into the cycle, is not part of it
    })
    graph = _without_parent_package_edges(import_graph(tmp_path, ("pkg",)))
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]], _cycles_text(cycles)


def test_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    _plant(tmp_path, {
        "lib/__init__.py": "",
        "lib/top.py": "import daemon.x\n",
        "lib/inner.py": "def f():\n    from daemon import y\n",
        "lib/stringy.py": "from importlib import import_module\nimport_module('daemon.x')\n",
        "lib/deep/__init__.py": "",
        "lib/deep/rel.py": "from ..clean import z\n",
        "lib/clean.py": "z = 1\n",
        "daemon/__init__.py": "",
        "daemon/x.py": "",
        "daemon/y.py": "",
    })
    graph = import_graph(tmp_path, ("lib", "daemon"))
    assert graph["lib.top"] == {"daemon.x"}
    assert graph["lib.inner"] == {"daemon.y"}
    assert graph["lib.stringy"] == {"daemon.x"}
    assert graph["lib.deep.rel"] == {"lib.clean"}
    assert find_cycles(graph) == []


def test_an_import_for_type_checking_is_a_layer_edge_but_no_cycle(tmp_path: Path) -> None:
    _plant(tmp_path, {
        "lib/__init__.py": "",
        "lib/a.py": "import lib.b\n",
        "lib/b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from lib import a\n    import daemon.x\nelse:\n    import lib.c\n"),
        "lib/c.py": "",
        "daemon/__init__.py": "",
        "daemon/x.py": "",
    })
    assert import_graph(tmp_path, ("lib", "daemon"))["lib.b"] == {"lib.a", "daemon.x", "lib.c"}
    runtime = import_graph(tmp_path, ("lib", "daemon"), runtime_only=True)
    assert runtime["lib.b"] == {"lib.c"}
    assert find_cycles(runtime) == []
