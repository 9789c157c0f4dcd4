"""The exporter against real tritonserver processes (host backend): what a user sees."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from gpupack.testing import TritonServer
from gpupack.triton.processes import backend_processes
from tests.exporter.conftest import measured_now, model_entry, peaks, server_config, tree_rss_bytes, wait_until

pytestmark = pytest.mark.triton
MIB = 2**20


def _infer(server: TritonServer, model: str) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}
    response = requests.post(f"{server.http_url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text


def test_attributed_memory_is_within_10_percent_of_what_unloading_frees(start_triton, exporter_factory):
    server = start_triton(name="a", models=["large", "small"])
    exporter = exporter_factory([server])
    entry = wait_until(lambda: measured_now(exporter.url, "large"))
    assert entry["source"] == "process"
    time.sleep(0.3)
    attributed = measured_now(exporter.url, "large")["current"]["gpu_memory"]
    stub_pids = {p.pid for p in backend_processes(server.pid) if p.model == "large"}
    before = tree_rss_bytes(server.pid)
    server.unload_model("large")
    wait_until(lambda: not stub_pids & {p.pid for p in backend_processes(server.pid)})
    freed = before - tree_rss_bytes(server.pid)
    assert freed > 150 * MIB  # the model holds 160 MiB: the ground truth itself is sane
    assert abs(attributed - freed) <= 0.10 * freed, f"attributed {attributed / MIB:.1f} MiB, unloading freed {freed / MIB:.1f} MiB"


def test_a_300ms_spike_between_two_rare_scrapes_is_in_the_peak(start_triton, exporter_factory):
    server = start_triton(name="a", models=["spiky"])
    exporter = exporter_factory([server], sample_hz=5)
    resident = wait_until(lambda: measured_now(exporter.url, "spiky"))["current"]["gpu_memory"]
    time.sleep(0.5)
    # Meanwhile a scraper asks for OpenMetrics + gzip back to back, so the render thread renders
    # and compresses every page it may while the sampler is meant to catch the spike.
    stop = threading.Event()

    def scrape() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                session.get(f"{exporter.url}/metrics", timeout=5, headers={
                    "Accept": "application/openmetrics-text;version=1.0.0", "Accept-Encoding": "gzip"})

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        _infer(server, "spiky")  # holds 2 x 64 MiB more for 300 ms, between our two scrapes
        # The spike is over once a sample shows the model back near its resident memory.
        entry = wait_until(lambda: (e := measured_now(exporter.url, "spiky"))
                           and e["current"]["gpu_memory"] < resident + 32 * MIB and e, what="a sample after the spike")
    finally:
        stop.set()
        scraper.join()
    assert entry["peaks"]["gpu_memory"] >= resident + 100 * MIB  # only the peak kept it
    metrics = requests.get(f"{exporter.url}/metrics", timeout=5).text
    peak_line = next(line for line in metrics.splitlines()
                     if line.startswith("gpupack_model_memory_peak_bytes{") and 'model="spiky"' in line)
    assert float(peak_line.rsplit(" ", 1)[1]) == entry["peaks"]["gpu_memory"]


def test_unloaded_model_stops_being_current_but_keeps_its_peak(start_triton, exporter_factory):
    server = start_triton(name="a", models=["small", "medium"])
    exporter = exporter_factory([server])
    peak = wait_until(lambda: measured_now(exporter.url, "medium"))["current"]["gpu_memory"]
    server.unload_model("medium")
    entry = wait_until(lambda: (e := model_entry(peaks(exporter.url), "medium")) and not e["loaded"] and e)
    assert "current" not in entry
    assert entry["peaks"]["gpu_memory"] >= peak
    assert entry["source"] == "process"

    def lines(family: str) -> list[str]:
        metrics = requests.get(f"{exporter.url}/metrics", timeout=5).text
        return [l for l in metrics.splitlines() if l.startswith(family + "{") and 'model="medium"' in l]

    wait_until(lambda: not lines("gpupack_model_memory_bytes"))  # once its stub has exited too
    assert lines("gpupack_model_memory_peak_bytes")


def test_stopping_a_server_flips_its_up_to_0_and_the_exporter_keeps_serving(start_triton, exporter_factory):
    a = start_triton(name="a", models=["small"])
    b = start_triton(name="b", models=["medium"])
    exporter = exporter_factory([a, b])
    wait_until(lambda: measured_now(exporter.url, "small") and measured_now(exporter.url, "medium"))
    a.stop()

    def up_lines() -> dict[str, str]:
        text = requests.get(f"{exporter.url}/metrics", timeout=5).text
        return {l.split('"')[1]: l.rsplit(" ", 1)[1] for l in text.splitlines() if l.startswith("gpupack_server_up{")}

    wait_until(lambda: up_lines() == {"a": "0.0", "b": "1.0"})
    document = peaks(exporter.url)
    servers = {s["server"]: s for s in document["servers"]}
    assert servers["a"]["up"] is False and servers["a"]["stale"] is True
    assert "gpu_memory" in model_entry(document, "small", "a")["peaks"]  # its peak is kept
    assert "current" in model_entry(document, "medium", "b")  # the other server is still measured
    assert requests.get(f"{exporter.url}/healthz", timeout=5).status_code == 200


def test_a_server_watched_over_grpc_is_measured_the_same_way(start_triton, exporter_factory):
    server = start_triton(name="a", models=["small"])
    exporter = exporter_factory([server_config(server, protocol="grpc", url=server.grpc_address)])
    entry = wait_until(lambda: measured_now(exporter.url, "small"))
    assert entry["source"] == "process" and entry["current"]["gpu_memory"] > 48 * MIB
