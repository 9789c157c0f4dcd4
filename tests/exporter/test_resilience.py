"""A server that fails and comes back, fed at the Triton client boundary."""

from __future__ import annotations

import requests

from gpupack.exporter.daemon import Exporter
from gpupack.exporter.settings import ServerConfig
from gpupack.exporter.sources.nvml import NvmlDoor
from tests.exporter.conftest import exporter_settings, wait_until
from tests.exporter.fakes import FakeGpu, FakeTritonClient, fake_pynvml


def _metric(url: str, prefix: str) -> str | None:
    for line in requests.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(prefix):
            return line.rsplit(" ", 1)[1]
    return None


def test_a_server_that_comes_back_is_collected_again_by_itself(tmp_path):
    client = FakeTritonClient({"m": {"config": {"instance_group": [{"kind": "KIND_GPU", "count": 1, "gpus": [0]}]},
                                     "stats": {"memory_usage": [{"type": "GPU", "id": 0, "byte_size": 1000}]}}})
    settings = exporter_settings([ServerConfig("t", "http://127.0.0.1:1")], tmp_path, backends=("nvml",))
    door = NvmlDoor(fake_pynvml([FakeGpu("GPU-a")]))
    with Exporter(settings, client_factory=lambda _: client, nvml_door=door) as exporter:
        model = 'gpupack_model_memory_bytes{device="GPU-a",model="m",server="t",source="triton",version="1"}'
        wait_until(lambda: _metric(exporter.url, model) == "1000.0")
        client.down = True
        wait_until(lambda: _metric(exporter.url, 'gpupack_server_up{server="t"}') == "0.0")
        assert _metric(exporter.url, model) is None
        assert float(_metric(exporter.url, 'gpupack_collect_errors_total{source="triton"}')) >= 1
        assert _metric(exporter.url, 'gpupack_model_memory_peak_bytes{device="GPU-a",model="m"') == "1000.0"
        client.down = False
        wait_until(lambda: _metric(exporter.url, 'gpupack_server_up{server="t"}') == "1.0")
        wait_until(lambda: _metric(exporter.url, model) == "1000.0")
