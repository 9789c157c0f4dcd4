"""The exposition as Prometheus itself judges it: promtool, and a real scrape by a real server."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests

from gpupack.testing.tritonserver import free_port
from tests.exporter.conftest import wait_until

pytestmark = [pytest.mark.triton, pytest.mark.prometheus]


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    return path


def test_promtool_check_metrics_is_clean_on_a_real_scrape(start_triton, exporter_factory):
    promtool = _need("promtool")
    server = start_triton(name="a", models=["small"])
    exporter = exporter_factory([server])
    wait_until(lambda: "gpupack_model_memory_bytes{" in requests.get(f"{exporter.url}/metrics", timeout=5).text)
    scrape = requests.get(f"{exporter.url}/metrics", timeout=5).text
    result = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr
    assert "NaN" not in scrape


def test_a_real_prometheus_scrapes_the_exporter(start_triton, exporter_factory, tmp_path):
    prometheus = _need("prometheus")
    server = start_triton(name="a", models=["small"])
    exporter = exporter_factory([server])
    target = exporter.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        f"scrape_configs:\n  - job_name: gpupack\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def query() -> list:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/api/v1/query", timeout=5,
                                      params={"query": 'gpupack_model_memory_bytes{model="small"}'}).json()
            except (requests.RequestException, ValueError):
                return []
            return answer.get("data", {}).get("result", [])

        (series,) = wait_until(query, timeout_seconds=60, interval_seconds=0.5)
        assert series["metric"]["source"] == "process" and float(series["value"][1]) > 40 * 2**20
    finally:
        process.terminate()
        process.wait(timeout=30)
