"""The committed dashboards are what grafana/generate.py produces, consistent, and their PromQL parses."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.dashboards import (
    GRAFANA_DIR,
    load_dashboards,
    load_generator,
    panel_queries,
    substitute,
    variables_used,
)

ROOT = GRAFANA_DIR.parent
# What Grafana substitutes; the values only need to make syntactically valid PromQL.
SYNTAX_VALUES = {"server": ".*", "device": ".*", "model": ".*", "datasource": "prometheus",
                 "__rate_interval": "1m", "__range": "6h"}


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    generator = load_generator()
    committed = {path.stem: path.read_text() for path in (GRAFANA_DIR / "dashboards").glob("*.json")}
    generated = {name: generator.render(build) for name, build in generator.DASHBOARDS.items()}
    assert sorted(committed) == ["device", "fleet-capacity", "model"]
    stale = [name for name in generated if committed.get(name) != generated[name]]
    assert not stale, f"run 'python grafana/generate.py': {stale} differ from the generator"


@pytest.mark.parametrize("name", ["fleet-capacity", "device", "model"])
def test_dashboard_has_the_four_variables_and_every_panel_uses_them(name: str) -> None:
    dashboard = load_dashboards()[name]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "server", "device", "model"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], f"{panel['title']} has no unit"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert variables_used(target["expr"]) <= set(SYNTAX_VALUES), target["expr"]


def test_rates_use_grafanas_rate_interval_never_a_fixed_window() -> None:
    for query in panel_queries():
        windows = re.findall(r"\[([^\]]+)\]", query.expr)
        assert all(w in ("$__rate_interval", "$__range") for w in windows), query


@pytest.mark.parametrize("name", ["fleet-capacity", "device", "model"])
def test_panels_tile_the_grid_without_overlap(name: str) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in load_dashboards()[name]["panels"]:
        pos = panel["gridPos"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        assert pos["x"] + pos["w"] <= 24
        taken |= cells


def test_device_ratios_are_drawn_against_the_policy_limit() -> None:
    limit = load_generator().POLICY_LIMIT_RATIO
    for dashboard in load_dashboards().values():
        for panel in dashboard["panels"]:
            exprs = " ".join(t["expr"] for t in panel["targets"])
            if panel["fieldConfig"]["defaults"]["unit"] == "percentunit" and (
                    "memory_total_bytes" in exprs or "utilization" in exprs):
                steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
                assert steps[-1]["value"] == limit, f"{panel['title']} has no threshold at the policy limit"
    memory = next(p for p in load_dashboards()["device"]["panels"] if p["title"] == "Memory by model")
    assert any(t["expr"].startswith(f"{limit} * ") for t in memory["targets"]), "no limit line on the device memory"


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query, written as a recording rule: no server needed."""
    promtool = shutil.which("promtool") or pytest.skip("promtool is not installed (Debian package prometheus)")
    queries = list(panel_queries())
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard_query_{i}", "expr": substitute(q.expr, SYNTAX_VALUES)} for i, q in enumerate(queries)
    ]}]}
    path = tmp_path / "dashboard-queries.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_provisioning_points_grafana_at_the_mounted_dashboards() -> None:
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "gpupack.yaml").read_text())
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["grafana"]["volumes"])
    assert mounts["../grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
