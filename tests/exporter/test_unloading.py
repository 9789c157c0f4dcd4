"""A model's backend process outlives its unload by a moment: that memory stays the model's."""

from __future__ import annotations

import time

import pytest
import requests

from gpupack.triton.processes import backend_processes
from tests.exporter.conftest import model_entry, peaks, running_exporter, wait_until

pytestmark = pytest.mark.triton
MIB = 2**20


def _baseline_bytes(document: dict, device: str) -> float:
    (entry,) = [d for d in document["devices"] if d["device"] == device]
    return entry["server_baseline"]["gpu_memory"]


def test_unloading_a_model_does_not_raise_the_server_baseline_peak(start_triton, tmp_path):
    server = start_triton(name="a", models=["large"])
    # Sample and poll Triton fast, so samples land while Triton no longer lists the model as READY
    # but its stub (still holding the model's 160 MiB at first) has not exited yet.
    with running_exporter([server], tmp_path / "state", sample_hz=50, triton_poll_seconds=0.05) as exporter:
        wait_until(lambda: (e := model_entry(peaks(exporter.url), "large")) and e["loaded"] and "current" in e)
        time.sleep(0.5)
        baseline_before = _baseline_bytes(peaks(exporter.url), "cpu:a")
        stubs = {p.pid for p in backend_processes(server.pid) if p.model == "large"}
        server.unload_model("large", wait=False)
        seen_unloading = False
        while stubs & {p.pid for p in backend_processes(server.pid)}:
            entry = model_entry(peaks(exporter.url), "large")
            metrics = requests.get(f"{exporter.url}/metrics", timeout=5).text
            if not entry["loaded"] and 'gpupack_model_memory_bytes{device="cpu:a",model="large"' in metrics:
                seen_unloading = True
                assert "current" not in entry  # the rules engine must not count it as placed here
            time.sleep(0.02)
        time.sleep(0.3)
        document = peaks(exporter.url)
    growth = _baseline_bytes(document, "cpu:a") - baseline_before
    assert growth < 16 * MIB, f"the server's baseline peak grew by {growth / MIB:.0f} MiB while 'large' unloaded"
    entry = model_entry(document, "large")
    assert entry["loaded"] is False and entry["peaks"]["gpu_memory"] > 150 * MIB
    assert seen_unloading, "no sample caught the stub outliving the unload: the test did not test anything"
