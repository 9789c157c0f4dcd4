"""Data flows one way: every package imports only the packages below it, so the next sideways
import fails CI.

Layers, bottom up: the core (``gpupack.*`` modules and ``gpupack.triton``) holds the shared
vocabulary; ``measurement`` reads devices; the exporter, the profiler and the rules engine stand on
those; the scheduler judges with the rules engine and packs with ``scheduler.packing``, which knows
problems, never policies; the closed loop wires the rules engine to the scheduler; ``app`` is the
command on top. ``gpupack.testing`` builds on the product for tests and benchmarks, and no product
module imports it; nothing outside ``tests/`` imports ``tests``.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Iterable

import pytest

REPO = Path(__file__).resolve().parents[1]

CORE = "core"
# Each unit and the units it may import (besides itself). Subpackages of the scheduler are units of
# their own so that packing stays free of policies.
ALLOWED: dict[str, set[str]] = {
    CORE: set(),
    "gpupack.measurement": {CORE},
    "gpupack.exporter": {CORE, "gpupack.measurement"},
    "gpupack.profiler": {CORE, "gpupack.measurement"},
    "gpupack.rules": {CORE},
    "gpupack.scheduler.packing": {CORE},
    "gpupack.scheduler": {CORE, "gpupack.rules", "gpupack.scheduler.packing", "gpupack.scheduler.demand"},
    "gpupack.scheduler.demand": {CORE, "gpupack.rules", "gpupack.scheduler.packing", "gpupack.scheduler"},
    "gpupack.scheduler.rebalance": {CORE, "gpupack.rules", "gpupack.scheduler.packing", "gpupack.scheduler.demand",
                                    "gpupack.scheduler"},
    "gpupack.closedloop": {CORE, "gpupack.rules", "gpupack.scheduler", "gpupack.scheduler.rebalance"},
    "gpupack.app": {CORE, "gpupack.measurement", "gpupack.exporter", "gpupack.profiler", "gpupack.rules",
                    "gpupack.scheduler", "gpupack.scheduler.packing", "gpupack.scheduler.demand",
                    "gpupack.scheduler.rebalance", "gpupack.closedloop"},
}
ALLOWED["gpupack.testing"] = set(ALLOWED) - {"gpupack.testing", "gpupack.app"}
# ``python -m gpupack`` must live in the core's folder; it only calls the command.
ENTRY_POINTS = {"gpupack.__main__": {"gpupack.app"}}


def unit_of(module: str) -> str | None:
    """The layer a ``gpupack.*`` module belongs to (None for anything outside gpupack)."""
    if module != "gpupack" and not module.startswith("gpupack."):
        return None
    for unit in sorted(ALLOWED, key=len, reverse=True):
        if unit != CORE and (module == unit or module.startswith(unit + ".")):
            return unit
    return CORE


def source_modules() -> dict[str, Path]:
    """Every product and harness module by its installed name, from pyproject's package folders."""
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules: dict[str, Path] = {}
    for package, folder in package_dirs.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            modules.setdefault(name, path)  # gpupack/ holds only the core; subfolders map to themselves
    return modules


def imported_names(path: Path, known: Iterable[str] = ()) -> list[str]:
    """Absolute module names imported anywhere in a file, function-level imports included.

    ``from package import name`` counts as ``package.name`` where that is a module of ours, so
    ``from gpupack.scheduler import packing`` is judged as the subpackage it names.
    """
    known = set(known)
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                      for alias in node.names]
    return names


def layering_offences(modules: dict[str, Path]) -> list[str]:
    offences = []
    for module, path in sorted(modules.items()):
        unit = unit_of(module)
        allowed = ENTRY_POINTS.get(module, ALLOWED[unit] if unit else set()) | {unit}
        for name in imported_names(path, modules):
            target = unit_of(name)
            if name == "tests" or name.startswith("tests."):
                offences.append(f"{_shown(path)}: imports {name} (only tests/ may)")
            elif target is not None and target not in allowed:
                offences.append(f"{_shown(path)}: {unit} imports {name} ({target})")
    return offences


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def test_every_package_imports_only_the_layers_below_it() -> None:
    assert layering_offences(source_modules()) == []


def test_benchmarks_use_the_product_and_the_harness_but_never_the_tests() -> None:
    offences = [f"{path.name}: {name}" for path in sorted((REPO / "bench").glob("*.py"))
                for name in imported_names(path) if name == "tests" or name.startswith("tests.")]
    assert offences == []


@pytest.mark.parametrize(("module", "sideways"), [
    ("gpupack.profiler.sweep", "gpupack.exporter.settings"),
    ("gpupack.rules.evaluator", "gpupack.scheduler.constraints"),
    ("gpupack.scheduler.packing.solver", "gpupack.rules.compiled"),
    ("gpupack.exporter.daemon", "gpupack.testing.fakes"),
    ("gpupack.domain", "gpupack.app.cli"),
    ("gpupack.app.demo", "gpupack.testing"),
    ("gpupack.closedloop.trigger", "tests.conftest"),
])
def test_a_deliberately_sideways_import_is_caught(tmp_path: Path, module: str, sideways: str) -> None:
    modules = source_modules()
    planted = tmp_path / Path(modules[module]).name
    planted.write_text(Path(modules[module]).read_text() + f"\n\ndef _planted() -> None:\n    import {sideways}\n")
    offences = layering_offences({**modules, module: planted})
    assert len(offences) == 1 and sideways in offences[0]
