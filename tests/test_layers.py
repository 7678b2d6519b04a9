"""The package's layers as facts: no import circle among its modules (imports inside functions
count too), and only backends/_simd.py imports the compiled module. lint-imports (the contracts
in pyproject.toml) states the same and the layers' order; this test needs nothing installed."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "python" / "splitnet_kernels"


def _modules() -> dict:
    """{dotted name: path} of every module of the package (a package by its __init__.py); the
    compiled ones, known by their .pyi stubs, with no path (they import nothing of ours)."""
    found: dict = {}
    for path in sorted(PACKAGE.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = found.get(name) or (path if path.suffix == ".py" else None)
    return found


def _imports(name: str, path: pathlib.Path, modules: dict) -> set:
    """The package's modules that `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            named = {f"{source}.{alias.name}" for alias in node.names} & modules.keys()
            # `from . import x` imports the module x, not the package; `from .m import f`, m
            targets.update(named or {source})
    return {t for t in targets if t in modules and t != name}


def _graph() -> dict:
    modules = _modules()
    return {name: _imports(name, path, modules) if path else set() for name, path in modules.items()}


def _cycle(graph: dict) -> list:
    """One import circle as [a, b, ..., a], or [] if there is none."""
    state: dict = {}
    path: list = []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_no_import_circle_among_the_packages_modules():
    cycle = _cycle(_graph())
    assert not cycle, "an import circle: " + " -> ".join(cycle)


def test_the_walk_finds_a_circle_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_only_the_simd_backend_imports_the_compiled_module():
    importers = sorted(name for name, targets in _graph().items() if "splitnet_kernels._core" in targets)
    assert importers == ["splitnet_kernels.backends._simd"]
