"""A server that fails and comes back: fed at the Triton client boundary, and a real restart."""

from __future__ import annotations

import pytest
import requests

from gpupack.exporter.daemon import Exporter
from gpupack.servers import ServerConfig
from gpupack.measurement.nvml import NvmlDoor
from tests.exporter.conftest import exporter_settings, running_exporter, server_config, wait_until
from gpupack.testing.fakes import FakeGpu, FakeTritonClient, fake_pynvml


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


@pytest.mark.triton
def test_a_restarted_triton_server_reads_down_then_up_with_collection_resumed_and_peaks_kept(start_triton, tmp_path):
    server = start_triton(name="a", models=["small"])
    # No PID in the config: after a restart the exporter must find the new tritonserver by its port.
    config = server_config(server, pid=None)
    with running_exporter([config], tmp_path / "state", triton_poll_seconds=0.1) as exporter:
        wait_until(lambda: _metric(exporter.url, _SMALL_NOW) is not None)
        old_pid, peak = server.pid, float(_metric(exporter.url, _SMALL_PEAK))
        # Stopped first, then restarted: Triton keeps answering an open connection while it shuts
        # down, so a back-to-back restart can be over before any poll finds the port closed.
        server.stop()
        wait_until(lambda: _metric(exporter.url, _UP) == "0.0")
        assert float(_metric(exporter.url, _SMALL_PEAK)) >= peak
        assert _metric(exporter.url, _SMALL_NOW) is None
        server.restart()
        server.load_model("small")  # explicit model control: a restarted server starts empty
        wait_until(lambda: _metric(exporter.url, _UP) == "1.0" and _metric(exporter.url, _SMALL_NOW) is not None)
        assert server.pid != old_pid
        assert float(_metric(exporter.url, _SMALL_NOW)) > 40 * 2**20  # measured again, in the new process tree
        assert float(_metric(exporter.url, _SMALL_PEAK)) >= peak


_UP = 'gpupack_server_up{server="a"}'
_SMALL_NOW = 'gpupack_model_memory_bytes{device="cpu:a",model="small",server="a",source="process",version="1"}'
_SMALL_PEAK = 'gpupack_model_memory_peak_bytes{device="cpu:a",model="small",server="a",version="1"}'
