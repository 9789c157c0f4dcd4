"""Where models are: devices from instance groups, device names and capacities from the exporter."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from gpupack.domain import Placement, Resource
from gpupack.errors import InputError
from gpupack.scheduler.rebalance.audit import AuditLog
from gpupack.scheduler.rebalance.current import FleetView, GpuIndex, LoadedModel, devices_of
from gpupack.scheduler.rebalance.step_mechanics import StepContext
from gpupack.scheduler.rebalance.multi_gpu import MultiGpuExecutor
from gpupack.scheduler.rebalance.inputs import ExporterInputs
from gpupack.scheduler.rebalance.drivers import build_executor
from gpupack.servers import ServerConfig

GPUS = GpuIndex({("multi", 0): "GPU-aaaa", ("multi", 1): "GPU-bbbb"})


def test_a_cpu_instance_group_runs_on_its_servers_cpu_device() -> None:
    assert devices_of("a", {"instance_group": [{"kind": "KIND_CPU", "count": 2}]}, GPUS) == ["cpu:a"]


def test_gpu_instance_groups_name_exporter_devices_by_index() -> None:
    config = {"instance_group": [{"kind": "KIND_GPU", "count": 1, "gpus": [1]}]}
    assert devices_of("multi", config, GPUS) == ["GPU-bbbb"]
    # No gpus list: Triton puts instances on every GPU the server sees.
    assert devices_of("multi", {"instance_group": [{"kind": "KIND_GPU", "count": 1}]}, GPUS) == ["GPU-aaaa", "GPU-bbbb"]
    assert devices_of("other", config, GPUS) == ["other:gpu1"]


def test_a_model_that_leaves_its_kind_to_triton_runs_on_the_servers_gpus_or_else_its_cpu_device() -> None:
    for config in ({}, {"instance_group": [{"kind": "KIND_AUTO", "count": 1}]}):
        assert devices_of("multi", config, GPUS) == ["GPU-aaaa", "GPU-bbbb"]
        # A CPU-only server (the exporter reports no GPU of it) is its own device.
        assert devices_of("a", config, GPUS) == ["cpu:a"]
        assert devices_of("multi", config, GpuIndex()) == ["cpu:multi"]


PEAKS = {
    "generated_at_seconds": 1764000000.0,
    "window_seconds": 604800,
    "servers": [{"server": "multi", "url": "http://127.0.0.1:8000", "up": True, "stale": False}],
    "devices": [
        {"device": f"GPU-{tag}", "kind": "gpu", "name": "H100", "index": index, "servers": ["multi"], "labels": {},
         "capacity": {"gpu_memory": 80 * 2**30, "gpu_utilization": 1.0}, "server_baseline": {"gpu_memory": 500 * 2**20},
         "stale": False}
        for index, tag in enumerate(["aaaa", "bbbb"])
    ],
    "models": [
        {"server": "multi", "model": "llm", "version": "1", "device": "GPU-aaaa", "loaded": False, "source": "process",
         "peaks": {"gpu_memory": 30 * 2**30}},
        {"server": "multi", "model": "llm", "version": "1", "device": "GPU-bbbb", "loaded": True, "source": "process",
         "current": {"gpu_memory": 20 * 2**30}, "peaks": {"gpu_memory": 20 * 2**30, "gpu_utilization": 0.4}},
    ],
}


@pytest.fixture
def exporter() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = json.dumps(PEAKS).encode()
            self.send_response(200 if self.path == "/api/v1/peaks" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_exporter_gives_devices_gpu_indices_and_the_highest_peak_per_model(exporter: str) -> None:
    inputs = ExporterInputs(exporter)()
    assert [d.device.name for d in inputs.devices] == ["GPU-aaaa", "GPU-bbbb"]
    assert inputs.gpus.device("multi", 1) == "GPU-bbbb"
    # The peak recorded before the model moved still counts: it is the model's, not the device's.
    assert inputs.footprints["llm"][Resource.GPU_MEMORY] == 30 * 2**30
    assert inputs.devices[0].servers == ("multi",)


def test_one_server_over_several_gpus_is_rebalanced_by_reloading_onto_gpu_indices(
    exporter: str, tmp_path: Path
) -> None:
    inputs = ExporterInputs(exporter)()
    context = StepContext(AuditLog(tmp_path / "audit.jsonl"))
    servers = [ServerConfig("multi", "http://h:1")]
    executor = build_executor(inputs, Placement({"llm": ("GPU-bbbb",)}), servers, context)
    assert isinstance(executor, MultiGpuExecutor)
    today = {"instance_group": [{"kind": "KIND_GPU", "count": 2, "gpus": [1]}]}
    assert executor.instance_groups(today, ("GPU-aaaa",)) == [{"count": 2, "kind": "KIND_GPU", "gpus": [0]}]


def test_every_loaded_model_without_a_memory_peak_is_named_not_planned_as_free(exporter: str) -> None:
    inputs = ExporterInputs(exporter)()
    only_utilization = replace(inputs, footprints={"llm": {Resource.GPU_UTILIZATION: 0.4}})
    fleet = FleetView((LoadedModel("multi", "llm", "1", "GPU-bbbb"), LoadedModel("multi", "bert", "1", "GPU-aaaa")),
                      0.0)

    named = "2 loaded models without a recorded memory peak, so no plan can count them: bert \\(on multi\\), " \
            "llm \\(on multi\\)"
    with pytest.raises(InputError, match=named):
        only_utilization.snapshot(fleet)
    with pytest.raises(InputError, match=named):
        only_utilization.models(fleet)
