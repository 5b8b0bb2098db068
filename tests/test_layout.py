"""The tree reads as the pipeline: invariants of the package's own layout, checked as code.

- no module over MAX_MODULE_LINES lines, no function over MAX_FUNCTION_LINES lines unless a comment
  ``# long: <reason>`` stands on the line above its ``def`` (the reason written beside it);
- ``argparse`` and ``print`` only in ``densegraph/cli/`` (the library reports through results and callbacks);
- no import cycle between densegraph's modules, lazy imports inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "densegraph"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
MODULES = sorted(PACKAGE.rglob("*.py"))

# Where the package does not meet the rules (empty since issue 16's split): a ratchet, not a waiver. A new
# violation fails; an entry here that no longer violates fails too, so the list only shrinks.
KNOWN: dict[str, set[str]] = {
    "size": set(),
    "function": set(),
    "cli-only": set(),
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _in_cli(path: Path) -> bool:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] in ("cli", "cli.py", "__main__.py")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_module_size(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    _ratchet(
        "size", _name(path), lines > MAX_MODULE_LINES, f"{lines} lines (at most {MAX_MODULE_LINES}): split it"
    )


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_function_size(path: Path) -> None:
    source = path.read_text(encoding="utf-8").splitlines()
    long = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            size = (node.end_lineno or node.lineno) - first + 1
            reason = source[first - 2].strip() if first >= 2 else ""
            if size > MAX_FUNCTION_LINES and not reason.startswith("# long:"):
                long.append((node.name, f"{size} lines, line {node.lineno}"))
    for name, where in long:
        _ratchet(
            "function",
            f"{_name(path)}.{name}",
            True,
            f"{where}: over {MAX_FUNCTION_LINES} lines, no '# long: why'",
        )
    for stale in {k for k in KNOWN["function"] if k.rsplit(".", 1)[0] == _name(path)} - {
        f"{_name(path)}.{n}" for n, _ in long
    }:
        _ratchet("function", stale, False, "")


@pytest.mark.parametrize("path", [p for p in MODULES if not _in_cli(p)], ids=_name)
def test_no_argparse_or_print_below_the_cli(path: Path) -> None:
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] == "argparse" for n in names):
                found.append(f"imports argparse (line {node.lineno})")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append(f"print (line {node.lineno})")
    _ratchet(
        "cli-only", _name(path), bool(found), f"{found}: the library reports through results and callbacks"
    )


def _ratchet(rule: str, name: str, violates: bool, why: str) -> None:
    if name in KNOWN[rule]:
        assert violates, f"{name} meets the {rule!r} rule now: remove it from KNOWN in tests/test_layout.py"
    else:
        assert not violates, f"{name}: {why}"


def _module_imports(path: Path) -> set[str]:
    """densegraph modules ``path`` imports, anywhere in it (a lazy import inside a function still ties the
    two modules together)."""
    me = _name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("densegraph"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module.startswith("densegraph"):
                found.add(module)
                found.update(f"{module}.{a.name}" for a in node.names)
    return found


def test_no_import_cycles() -> None:
    names = {_name(p) for p in MODULES}
    graph = nx.DiGraph()
    for path in MODULES:
        me = _name(path)
        graph.add_node(me)
        for target in _module_imports(path) & names:
            if target != me and not me.startswith(target + "."):  # a submodule importing its package
                graph.add_edge(me, target)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles}"
