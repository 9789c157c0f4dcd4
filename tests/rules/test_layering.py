"""Data flows one way: the rules engine judges and never reaches up into the scheduler."""

from __future__ import annotations

import ast
from pathlib import Path

RULES = Path(__file__).parents[2] / "rules"


def test_nothing_under_rules_imports_the_scheduler_or_the_loop_wiring() -> None:
    offenders = []
    for path in sorted(RULES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names
                          if n.startswith(("gpupack.scheduler", "gpupack.closedloop"))]
    assert offenders == []
