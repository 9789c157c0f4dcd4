"""In a cluster the scheduler plans from Prometheus: a real ``/usr/bin/prometheus`` scraping a real
exporter over real Triton servers must give it what the exporter's own API gives it, and a rules
engine reading it must fix a crowded device.
"""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from gpupack.domain import Resource
from gpupack.scheduler.rebalance.inputs import ExporterInputs, FleetInputs, PrometheusInputs
from gpupack.timing import wait_until

from tests.conftest import CROWDED_DEVICE_BYTES, REBALANCE_AT_80_PERCENT
from tests.deploy.promstack import Prometheus, run_prometheus
from tests.exporter.conftest import crowded_pair, exporter_factory  # noqa: F401 - fixtures
from tests.rules.conftest import wait_for as wait_for_metrics
from tests.rules.conftest import write_policies
from tests.rules.test_rules_rebalance_loop import SUCCEEDED, rules_process  # noqa: F401 - fixture

pytestmark = pytest.mark.prometheus

MIB = 2**20
WINDOW_SECONDS = 6.0


def _target(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


@contextlib.contextmanager
def scraping(url: str, workdir: Path) -> Iterator[Prometheus]:
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": "gpupack-exporter", "static_configs": [{"targets": [_target(url)]}]}]}
    with run_prometheus(config, workdir) as prometheus:
        yield prometheus


def _both_models_seen(inputs: PrometheusInputs) -> FleetInputs | None:
    fleet = inputs()
    seen = (set(fleet.footprints) == {"large-a", "large-b"} and all(d.server_baseline for d in fleet.devices)
            and all(Resource.GPU_MEMORY in peaks for peaks in fleet.footprints.values()))
    return fleet if seen and len(fleet.devices) == 2 else None


@pytest.mark.triton
def test_prometheus_gives_the_scheduler_the_devices_baselines_and_peaks_the_exporter_reports(
    crowded_pair, tmp_path  # noqa: F811 - fixture
) -> None:
    _, _, exporter = crowded_pair()
    with scraping(exporter.url, tmp_path / "prometheus") as prometheus:
        from_prometheus = wait_until(lambda: _both_models_seen(PrometheusInputs(prometheus.url, 600.0)), 30,
                                     "both models' peaks and both servers' baselines in Prometheus")
    from_exporter = ExporterInputs(exporter.url)()

    def devices(inputs: FleetInputs) -> dict[str, tuple]:
        return {d.device.name: (d.servers, d.device.capacity[Resource.GPU_MEMORY]) for d in inputs.devices}

    assert devices(from_prometheus) == devices(from_exporter) == {
        "cpu:t0": (("t0",), CROWDED_DEVICE_BYTES), "cpu:t1": (("t1",), CROWDED_DEVICE_BYTES)}
    for prometheus_device, exporter_device in zip(from_prometheus.devices, from_exporter.devices):
        assert prometheus_device.server_baseline[Resource.GPU_MEMORY] == pytest.approx(
            exporter_device.server_baseline[Resource.GPU_MEMORY], rel=0.05)
    for model in ("large-a", "large-b"):
        memory_bytes = from_prometheus.footprints[model][Resource.GPU_MEMORY]
        assert memory_bytes == pytest.approx(from_exporter.footprints[model][Resource.GPU_MEMORY], rel=0.05)
        assert memory_bytes > 160 * MIB
    assert from_prometheus.gpus.names == {}  # CPU-only servers: no CUDA index to map


@pytest.mark.triton
def test_rules_run_from_prometheus_with_servers_splits_a_crowded_device(
    crowded_pair, rules_process, tmp_path  # noqa: F811 - fixtures
) -> None:
    t0, t1, exporter = crowded_pair(window_seconds=WINDOW_SECONDS)
    with scraping(exporter.url, tmp_path / "prometheus") as prometheus:
        rules = rules_process("--policies", str(write_policies(tmp_path, REBALANCE_AT_80_PERCENT)), "--source", "prometheus",
                              "--prometheus-url", prometheus.url, "--window", f"{WINDOW_SECONDS:g}s",
                              "--server", f"t0={t0.http_url}", "--server", f"t1={t1.http_url}",
                              "--state-dir", str(tmp_path / "state"), "--drain", "0.2s", "--apply")
        body = wait_for_metrics(rules.metrics, SUCCEEDED, timeout_seconds=60)
        assert rules.stop() == 0
    (moved,) = t1.ready_models()
    assert sorted(t0.ready_models() + [moved]) == ["large-a", "large-b"]
    assert f'gpupack_model_placement{{device="cpu:t1",model="{moved}",server="t1",version="1"}} 1.0' in body
    (applied,) = rules.events("rebalance_applied")
    assert applied["succeeded"] and applied["requested_for"] == ["gpu-memory-80@cpu:t0"]


# Two nodes, each with a GPU 0 (node-b also a GPU 1), as their exporters expose them.
TWO_NODES = """\
gpupack_device_info{device="GPU-aaa",kind="gpu",name="NVIDIA A10",index="0",parent=""} 1
gpupack_device_info{device="GPU-bbb",kind="gpu",name="NVIDIA A10",index="0",parent=""} 1
gpupack_device_info{device="GPU-ccc",kind="gpu",name="NVIDIA A10",index="1",parent=""} 1
gpupack_device_memory_total_bytes{device="GPU-aaa"} 2.4e10
gpupack_device_memory_total_bytes{device="GPU-bbb"} 2.4e10
gpupack_device_memory_total_bytes{device="GPU-ccc"} 2.4e10
gpupack_server_unattributed_memory_peak_bytes{server="node-a",device="GPU-aaa"} 3.0e8
gpupack_server_unattributed_memory_peak_bytes{server="node-b",device="GPU-bbb"} 3.0e8
gpupack_model_memory_peak_bytes{server="node-b",model="ocr",version="1",device="GPU-ccc"} 2.0e9
gpupack_model_memory_bytes{server="node-b",model="ocr",version="1",device="GPU-ccc",source="nvml"} 1.9e9
"""


@pytest.fixture
def static_exporter() -> Iterator[str]:
    """Serves ``TWO_NODES`` as an exporter's /metrics: what two GPU nodes' exporters would show."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(TWO_NODES.encode())

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _scraped(inputs: FleetInputs) -> FleetInputs | None:
    return inputs if "ocr" in inputs.footprints and inputs.gpus.names else None


def test_each_servers_gpu_indices_come_from_device_info_kept_apart_per_node(static_exporter, tmp_path) -> None:
    with scraping(static_exporter, tmp_path / "prometheus") as prometheus:
        # Each query sees the samples scraped so far: wait until the first scrape precedes them all.
        inputs = wait_until(lambda: _scraped(PrometheusInputs(prometheus.url, 600.0)()), 30, "the GPUs in Prometheus")
    assert dict(inputs.gpus.names) == {("node-a", 0): "GPU-aaa", ("node-b", 0): "GPU-bbb", ("node-b", 1): "GPU-ccc"}
    assert inputs.gpus.device("node-b", 1) == "GPU-ccc"
    assert inputs.footprints["ocr"][Resource.GPU_MEMORY] == 2.0e9
