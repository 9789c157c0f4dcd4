"""Demand from a real Prometheus scraping a real Triton server's own metrics."""

from __future__ import annotations

import json
import time

import pytest
import requests

from gpupack.app.cli import main
from gpupack.rules.demand_source import demand_from_prometheus
from gpupack.timing import wait_until

from tests.deploy.promstack import run_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.triton]

RATE_PER_SECOND = 20.0
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}
PROFILE = """\
server_baseline: {peak_gpu_memory_bytes: 64MiB}
models:
  - {model: small, peak_gpu_memory_bytes: 48MiB, throughput_per_second: 15, peak_gpu_utilization_ratio: 30%}
  - {model: medium, peak_gpu_memory_bytes: 96MiB, throughput_per_second: 100, peak_gpu_utilization_ratio: 30%}
"""


def send_paced(server, model: str, rate_per_second: float, seconds: float) -> int:
    """At most rate x seconds requests to 127.0.0.1, one every 1/rate seconds."""
    sent, started = 0, time.monotonic()
    while sent < rate_per_second * seconds:
        wait = started + sent / rate_per_second - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        response = requests.post(f"{server.http_url}/v2/models/{model}/infer", json=BODY, timeout=10)
        response.raise_for_status()
        sent += 1
    return sent


def test_demand_is_each_models_peak_request_rate_plus_headroom(start_triton, tmp_path, capsys):
    server = start_triton(models=["small", "medium"])
    target = server.metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": "triton", "static_configs": [{"targets": [target]}]}]}
    with run_prometheus(config, tmp_path / "prometheus") as prometheus:
        wait_until(lambda: prometheus.query('nv_inference_count{model="small"}'), 30, "Triton's counters in Prometheus")
        send_paced(server, "small", RATE_PER_SECOND, 8.0)
        time.sleep(3)  # two more scrapes after the last request
        demands = {d.model: d for d in demand_from_prometheus(prometheus.url, 120, headroom_ratio=0.2,
                                                              rate_window_seconds=4)}
        assert set(demands) == {"small", "medium"}
        assert demands["small"].rate_per_second == pytest.approx(RATE_PER_SECOND * 1.2, rel=0.3)
        assert demands["medium"].rate_per_second == 0
        assert demands["small"].latency_p99_seconds is None

        profile = tmp_path / "profile.yaml"
        profile.write_text(PROFILE)
        status = main(["plan", "--profile", str(profile), "--device-memory", "1GiB", "--format", "json",
                       "--demand-from-prometheus", prometheus.url, "--window", "2m", "--headroom", "20%"])
    out, err = capsys.readouterr()
    assert status == 0, err
    document = json.loads(out)
    by_model = {m["model"]: m for m in document["models"]}
    # Over the CLI's 5-minute rate window (evaluated each minute), 8 s at 20/s reads as well under
    # 15/s, or as 0 before the next minute's evaluation: one copy each either way.
    assert set(by_model) == {"small", "medium"}
    assert 0 <= by_model["small"]["demand_per_second"] < 15
    assert by_model["medium"]["demand_per_second"] == 0
    assert document["device_count"] == 1
