"""The house rules of docs/architecture.md, checked on the source: no import circle between modules
of baize/ (lazy imports inside functions count: they are circles all the same), imports only down
the layers docs/architecture.md lists, at most 12 modules directly in baize/, no module over 600
lines, no class over 200, no function over 100, and no `hasattr` probe of an LLM's abilities."""
import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "baize"
DOC = PKG.parent / "docs" / "architecture.md"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the baize modules it imports, at the top or inside a function."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in mods:
                        graph[m].add(f"{target}.{alias.name}")
                    elif target in mods:
                        graph[m].add(target)
            elif isinstance(node, ast.Import):
                graph[m].update(a.name for a in node.names if a.name in mods)
        graph[m].discard(m)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def layers(doc: str) -> dict[str, int]:
    """unit -> layer number, from the fenced block under docs/architecture.md's "## Layers" heading:
    one line per layer, lowest first, `N  unit unit/ ...` (a subpackage ends in /)."""
    block = doc.split("## Layers", 1)[1].split("```", 2)[1]
    out = {}
    for line in block.splitlines():
        if (m := re.match(r"\s*(\d+)\s+(.+)$", line)):
            for unit in m.group(2).split("#")[0].split():
                out[unit.rstrip("/")] = int(m.group(1))
    return out


def unit_of(module: str) -> str:
    """baize.llm.engine -> llm (its subpackage); baize.runner -> runner; baize -> __init__."""
    parts = module.split(".")[1:]
    return parts[0] if parts else "__init__"


def upward_imports(graph: dict[str, set[str]], layer: dict[str, int]) -> list[str]:
    return sorted(f"{m} -> {t} ({unit_of(m)} is layer {layer[unit_of(m)]}, {unit_of(t)} layer {layer[unit_of(t)]})"
                  for m, targets in graph.items() for t in targets
                  if unit_of(m) != unit_of(t) and layer[unit_of(m)] < layer[unit_of(t)])


def test_imports_point_down_the_layers():
    layer = layers(DOC.read_text())
    graph = import_graph()
    unplaced = sorted({unit_of(m) for m in graph} - set(layer))
    assert not unplaced, f"{unplaced}: give each a layer in docs/architecture.md's ## Layers block"
    assert upward_imports(graph, layer) == []


def test_the_layer_check_sees_an_upward_import():
    layer = layers("## Layers\n```\n1  config\n2  llm/\n3  judge/   # a comment\n```\n")
    assert layer == {"config": 1, "llm": 2, "judge": 3}
    graph = {"baize.llm.base": {"baize.config", "baize.llm.engine"}, "baize.llm.engine": set(),
             "baize.judge.core": {"baize.llm.base"}, "baize.config": {"baize.judge.core"}}
    assert upward_imports(graph, layer) == ["baize.config -> baize.judge.core (config is layer 1, judge layer 3)"]


def test_at_most_twelve_modules_at_the_top():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 12, f"{len(top)} modules directly in baize/: {top}; move stage code into its subpackage"


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_module_class_and_function_sizes(path):
    lines = path.read_text().count("\n")
    assert lines <= 600, f"{path.name}: {lines} lines; split it by job"
    nodes = list(ast.walk(ast.parse(path.read_text())))
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in nodes
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 100]
    assert not long, f"{path.name}: functions over 100 lines: {long}"
    big = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in nodes
           if isinstance(n, ast.ClassDef) and n.end_lineno - n.lineno + 1 > 200]
    assert not big, f"{path.name}: classes over 200 lines: {big}; give each job its own class"


def test_llm_abilities_are_declared_not_probed():
    # the LLM base class declares can_* / is_local flags; probing an llm object's attributes would
    # silently switch a path off when a backend renames a method
    probe = re.compile(r"hasattr\(\s*(self\.)?(llm|policy|judge|teacher)\b")
    found = [f"{p.name}:{i}" for p in PKG.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if probe.search(line)]
    assert not found
