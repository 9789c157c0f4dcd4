"""Read the committed dashboards and turn their panel queries into plain PromQL, as Grafana does."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator, Mapping

GRAFANA_DIR = Path(__file__).resolve().parents[2] / "grafana"
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    expr: str

    @property
    def test_id(self) -> str:
        return f"{self.dashboard}: {self.panel} [{self.expr[:40]}]"


def load_generator() -> ModuleType:
    """grafana/generate.py is a script, not a package module: load it by path."""
    spec = importlib.util.spec_from_file_location("gpupack_grafana_generate", GRAFANA_DIR / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_dashboards() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted((GRAFANA_DIR / "dashboards").glob("*.json"))}


def panel_queries() -> Iterator[PanelQuery]:
    for name, dashboard in load_dashboards().items():
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                yield PanelQuery(name, panel["title"], target["expr"])


def variables_used(expr: str) -> set[str]:
    return {a or b for a, b in VARIABLE.findall(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` like Grafana; a variable without a value is an error."""
    return VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)
