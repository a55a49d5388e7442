"""The package's import graph has no cycles, lazy imports included.

Every module under alignchat/ is parsed with `ast` (nothing is imported), and every `import` and
`from ... import` anywhere in it (module level, inside functions and methods, under `if TYPE_CHECKING`)
plus `importlib.import_module("literal")` becomes an edge to the alignchat module it names; relative
imports are resolved against the importing module's package. A cycle means two modules cannot be
understood, tested or loaded one without the other, and that one of them is imported half-initialised
whenever the lazy import runs first.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "alignchat"


def module_files() -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is a package __init__)."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _known(name: str, modules) -> str | None:
    """The longest prefix of dotted `name` that is one of our modules."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, is_pkg: bool, modules) -> dict[str, int]:
    """alignchat modules that `module` imports -> line of the first such import."""
    package = module if is_pkg else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(name: str | None, line: int):
        target = _known(name, modules) if name else None
        if target and target != module:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:  # `from . import x` and `from .pkg import submodule` name modules
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, node.lineno)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "import_module"):
            add(node.args[0].value, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    modules = module_files()
    return {m: imports_of(m, p, is_pkg, modules) for m, (p, is_pkg) in modules.items()}


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the groups of modules that reach each other, larger than one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    group = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        group.append(w)
                        if w == v:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return sorted(groups)


def one_cycle(graph: dict[str, dict[str, int]], group: list[str]) -> list[str]:
    """A shortest import cycle through the group's first module, as 'a (line n) -> b ...' steps."""
    members, start = set(group), group[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    path.reverse()
                    return [f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:] + [start])] + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return group


def describe(graph, groups) -> str:
    return "\n".join(f"  {' -> '.join(one_cycle(graph, g))}\n    (all of: {', '.join(g)})" for g in groups)


def test_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    # a function-level relative import (`from .checkpoint import build_model` inside load_gguf)
    assert "alignchat.checkpoint" in graph["alignchat.gguf_import"]
    # `from . import metrics as M` names a module, not the package
    assert "alignchat.eval.metrics" in graph["alignchat.eval.judges"]
    # two levels up, into another package
    assert "alignchat.fetch" in graph["alignchat.data.sources"]
    # a cycle built from these edges is found
    toy = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert strongly_connected(toy) == [["a", "b", "c"]]
    assert one_cycle(toy, ["a", "b", "c"]) == ["a (line 1)", "b (line 2)", "c (line 3)", "a"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles in alignchat (lazy imports included):\n" + describe(graph, cycles)

