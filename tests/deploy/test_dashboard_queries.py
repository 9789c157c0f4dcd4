"""Every dashboard panel's query returns data from a real Prometheus scraping the live fleet.

A panel whose series come from a component not built yet is skipped, naming that component. The
queries run once the fleet's scheduler has moved a model, so the move panels show a real move.
"""

from __future__ import annotations

import math
import re
from typing import Iterator

import pytest

from gpupack.timing import wait_until

from tests.deploy.conftest import IDLE_MODEL, LOADED_MODEL, NOT_BUILT, SERVER, SPARE_SERVER, LiveFleet
from tests.deploy.dashboards import PanelQuery, panel_queries, substitute
from tests.deploy.promstack import Prometheus, run_prometheus

pytestmark = [pytest.mark.triton, pytest.mark.prometheus]

SCRAPE_INTERVAL_SECONDS = 1
# Grafana's $__rate_interval: at least four scrape intervals.
VALUES = {"server": SERVER, "device": f"cpu:{SERVER}", "model": LOADED_MODEL,
          "__rate_interval": f"{4 * SCRAPE_INTERVAL_SECONDS}s", "__range": "1m"}

# Which process exposes a series, by metric-name prefix (first match wins).
COMPONENTS = [
    ("gpupack_device_memory_bandwidth_", "gpu"),
    ("gpupack_rebalance_", "rebalance"),
    ("gpupack_model_ready_copies", "rebalance"),
    ("gpupack_model_desired_copies", "rebalance"),
    ("gpupack_policy_", "rules"),
    ("gpupack_", "exporter"),
    ("nv_", "triton"),
]
NOT_AVAILABLE = {
    **NOT_BUILT,
    "gpu": "memory bandwidth is measured on NVIDIA GPUs only; CPU-only servers have none",
}
MOVED = 'gpupack_rebalance_moves_total{result="succeeded"} >= 1'


def components_of(expr: str) -> set[str]:
    metrics = set(re.findall(r"\b(?:gpupack|nv)_\w+", expr))
    return {next(c for prefix, c in COMPONENTS if m.startswith(prefix)) for m in metrics}


@pytest.fixture(scope="module")
def prometheus(live_fleet: LiveFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    config = {"global": {"scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s"}, "scrape_configs": live_fleet.scrape_configs}
    with run_prometheus(config, tmp_path_factory.mktemp("prometheus")) as prometheus:
        wait_until(lambda: prometheus.query(f'rate(nv_inference_request_success{{model="{LOADED_MODEL}"}}[4s]) > 0'),
                   60, "Prometheus to see the steady requests")
        if "rebalance" in live_fleet.running:
            wait_until(lambda: prometheus.query(MOVED), 90, "Prometheus to see the scheduler's move")
        yield prometheus


def _finite(result: list[dict]) -> list[float]:
    return [float(sample["value"][1]) for sample in result if math.isfinite(float(sample["value"][1]))]


@pytest.mark.parametrize("query", list(panel_queries()), ids=lambda q: q.test_id)
def test_panel_query_returns_data(live_fleet: LiveFleet, prometheus: Prometheus, query: PanelQuery) -> None:
    missing = sorted(components_of(query.expr) - live_fleet.running)
    if missing:
        pytest.skip("; ".join(NOT_AVAILABLE[c] for c in missing))
    expr = substitute(query.expr, VALUES)
    assert wait_until(lambda: _finite(prometheus.query(expr)), 15, f"data for {expr}")


def test_variable_queries_offer_the_running_fleet(live_fleet: LiveFleet, prometheus: Prometheus) -> None:
    live_fleet.require("exporter")
    wait_until(lambda: prometheus.query("gpupack_model_memory_peak_bytes"), 30, "the exporter's series")
    assert SERVER in prometheus.label_values("server", "gpupack_server_up")
    assert VALUES["device"] in prometheus.label_values("device", "gpupack_device_memory_total_bytes")
    models = prometheus.label_values("model", f'gpupack_model_memory_peak_bytes{{server=~"{SERVER}"}}')
    assert {LOADED_MODEL, IDLE_MODEL} <= set(models)


def test_triton_series_carry_the_server_name_the_model_dashboard_filters_on(prometheus: Prometheus) -> None:
    success = prometheus.query(f'nv_inference_request_success{{server="{SERVER}",model="{LOADED_MODEL}"}}')
    assert success and success[0]["metric"]["version"] == "1"


def test_the_scheduler_moved_the_idle_model_to_the_spare_server(live_fleet: LiveFleet, prometheus: Prometheus) -> None:
    live_fleet.require("rebalance")
    assert live_fleet.spare_server.ready_models() == [IDLE_MODEL]
    assert live_fleet.server.ready_models() == [LOADED_MODEL]
    placement = prometheus.query(f'gpupack_model_placement{{model="{IDLE_MODEL}"}}')
    assert [(p["metric"]["server"], p["metric"]["device"]) for p in placement] == [
        (SPARE_SERVER, f"cpu:{SPARE_SERVER}")]
    assert _finite(prometheus.query("sum(gpupack_rebalance_moves_total)")) == [1.0]
