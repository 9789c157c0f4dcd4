"""A demand series from a real Prometheus: a week of `nv_inference_count` history backfilled with
`promtool tsdb create-blocks-from openmetrics`, planned from with `--demand-from-prometheus --step`."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from gpupack.app.cli import main
from gpupack.rules.demand_source import demand_series_from_prometheus

from tests.deploy.promstack import require_binary, run_prometheus

pytestmark = [pytest.mark.prometheus]

WEEK_SECONDS = 7 * 86400
BUSY, QUIET = 10.0, 1.0  # inferences per second
PROFILE = """\
server_baseline: {peak_gpu_memory_bytes: 1GiB}
models:
  - {model: day, peak_gpu_memory_bytes: 2GiB, throughput_per_second: 10, peak_gpu_utilization_ratio: 60%}
  - {model: night, peak_gpu_memory_bytes: 2GiB, throughput_per_second: 10, peak_gpu_utilization_ratio: 60%}
"""


def rate_at(model: str, at: float) -> float:
    busy_hours = range(8, 16) if model == "day" else range(20, 24)
    return BUSY if int(at // 3600) % 24 in busy_hours else QUIET


def backfill(path, end: float) -> None:
    """A week of counters, a sample a minute, ending at ``end``; written as OpenMetrics, into blocks."""
    lines = ["# TYPE nv_inference_count unknown"]
    start = int(end - WEEK_SECONDS) // 60 * 60
    for model in ("day", "night"):
        count = 0.0
        for at in range(start, int(end), 60):
            count += rate_at(model, at) * 60
            lines.append(f'nv_inference_count{{model="{model}",version="1"}} {count:g} {at}')
    lines.append("# EOF")
    source = path / "history.om"
    source.write_text("\n".join(lines) + "\n")
    subprocess.run([require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", "-q", str(source),
                    str(path / "prometheus" / "data")], check=True, capture_output=True, timeout=120)


def test_a_week_of_history_becomes_a_series_and_a_plan_by_the_peak_of_the_sum(tmp_path, capsys):
    end = time.time() - 120
    backfill(tmp_path, end)
    with run_prometheus({"global": {"scrape_interval": "15s"}}, tmp_path / "prometheus") as prometheus:
        series = demand_series_from_prometheus(prometheus.url, WEEK_SECONDS, 3600, at_seconds=end)
        assert series.steps == 168 and set(series.models) == {"day", "night"}
        assert series.start_seconds == end - WEEK_SECONDS, "each sample is the peak of the step ending at its time"
        for model, rates in series.rates_per_second.items():
            assert max(rates) == pytest.approx(BUSY, rel=0.05)
            assert min(rates) == pytest.approx(QUIET, rel=0.05)
            busy = sum(r > (BUSY + QUIET) / 2 for r in rates)
            hours = 8 if model == "day" else 4
            assert 7 * hours <= busy <= 7 * (hours + 1), f"{model}: {busy} busy steps"

        profile = tmp_path / "profile.yaml"
        profile.write_text(PROFILE)
        status = main(["plan", "--profile", str(profile), "--device-memory", "16GiB", "--format", "json",
                       "--demand-from-prometheus", prometheus.url, "--window", "7d", "--step", "1h"])
        document = json.loads(capsys.readouterr().out)
    assert status == 0
    assert document["steps"] == 168
    assert document["device_count"] == 1, "busy at different hours, the two share a device"
    assert document["sum_of_peaks"]["device_count"] == 2
