"""tinyllm's modules import each other without a cycle.

A cycle (a imports b, b imports a, directly or around a longer loop) means neither module
reads on its own and import order starts to matter; a late import inside a function
only hides one.  So every import statement counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "tinyllm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The tinyllm modules this file imports (from x import y counts x.y when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    # a submodule import runs its package's __init__ too, but that is no edge of ours to
    # break: count only the modules named
    return {m for m in out if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = sorted(PKG.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_walker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_tinyllm_has_no_import_cycle():
    graph = import_graph()
    assert "tinyllm.quant.rows" in graph and "tinyllm.jit" in graph["tinyllm.quant.rows"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_engine_does_not_import_the_tools():
    """tinyllm/tools/ (quantize, inspect, ladder, perplexity, kld, the Ollama ledger) builds
    on the engine, never the reverse: the engine reads on its own.  Front ends (cli, chat,
    serve) may use both."""
    graph = import_graph()
    front = {"tinyllm.cli", "tinyllm.chat", "tinyllm.serve", "tinyllm.__main__"}
    engine = {m for m in graph if not m.startswith("tinyllm.tools") and m not in front}
    assert "tinyllm.startup" in engine and "tinyllm.memory" in engine
    for m in sorted(engine):
        bad = sorted(n for n in graph[m] if n.startswith("tinyllm.tools") or n in front)
        assert not bad, f"{m} imports {bad}"
