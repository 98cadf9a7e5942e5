"""The architecture's rules, checked on the source: who writes each group of EndpointState, and
how big modules and functions may grow (STYLE.md, rule 7)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "adapters", "discovery")

# EndpointState group -> the only modules that assign to its fields (gateway/endpoints/state.py).
WRITERS = {
    "health": {"gateway/endpoints/readiness.py"},
    "calls": {"gateway/routing/scheduler.py", "gateway/routing/plugins/pickers.py"},
    "scrape": {"gateway/load/split.py"},
    "ejection": {"gateway/routing/outlier.py"},
}


def _sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) if "_pb2" not in p.name]


def _group_writes(tree: ast.AST) -> set[str]:
    """Groups whose fields this module assigns: `x.<group>.<field> = ...` (or +=, or a tuple)."""
    groups: set[str] = set()
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        flat: list[ast.expr] = []
        for t in targets:
            flat.extend(t.elts if isinstance(t, ast.Tuple) else [t])
        for t in flat:
            if isinstance(t, ast.Subscript):  # calls.latency[model] = ...
                t = t.value
            if (
                isinstance(t, ast.Attribute)
                and isinstance(t.value, ast.Attribute)
                and t.value.attr in WRITERS
            ):
                groups.add(t.value.attr)
    return groups


def test_each_endpoint_state_group_has_one_writer() -> None:
    found: dict[str, set[str]] = {group: set() for group in WRITERS}
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "gateway/endpoints/state.py":
            continue
        for group in _group_writes(ast.parse(path.read_text())):
            found[group].add(rel)
    assert found == WRITERS


def test_the_rule_checker_sees_writes() -> None:
    """The checker itself: each kind of write is found (else the test above proves nothing)."""
    code = "s.calls.in_flight += 1\na.health.live, b.scrape.load = 1, 2\ns.calls.latency['m'] = 1\nx.ejection.n: int = 0"
    assert _group_writes(ast.parse(code)) == {"calls", "health", "scrape", "ejection"}


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function, its docstring not counted."""
    lines = (fn.end_lineno or fn.lineno) - fn.lineno + 1
    first = fn.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        lines -= (first.end_lineno or first.lineno) - first.lineno + 1
    return lines


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in _sources():
        text = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        if text.count("\n") > 400:
            too_long.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _body_lines(node) > 70:
                too_long.append(f"{rel}:{node.lineno} {node.name}: {_body_lines(node)} lines")
    assert too_long == []
