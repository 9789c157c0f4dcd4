"""The sample model answers to its configuration as a real one does, on real Triton: a batch costs
a fixed part plus a part per item (so dynamic batching pays), instances run in parallel on the
cores, and every instance holds its own footprint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import psutil
import pytest

from gpupack.profiler.loadgen import LoadGenerator, signature_from_config
from gpupack.profiler.stats import TritonCounters
from gpupack.testing import SampleModel, TritonServer, write_model_repository
from gpupack.triton.processes import backend_processes

pytestmark = pytest.mark.triton
MIB = 2**20
# 20 ms per batch and 1 ms per item: a batch of 8 costs 28 ms instead of 8 x 21 ms.
COSTLY = SampleModel("costly", 48 * MIB, compute_seconds=0.02, item_compute_seconds=0.001)


@pytest.fixture
def server(start_triton: Callable[..., TritonServer], tmp_path: Path) -> TritonServer:
    return start_triton(name="costs", repository=write_model_repository(tmp_path / "repo", [COSTLY]))


def _config(server: TritonServer, *, count: int = 1, dynamic: bool = False) -> dict:
    server.load_model(COSTLY.name)
    config = server.control().model_config(COSTLY.name)
    config["instance_group"] = [{"kind": "KIND_CPU", "count": count}]
    config.pop("dynamic_batching", None)
    if dynamic:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": "2000"}
    server.unload_model(COSTLY.name)
    server.load_model(COSTLY.name, config)
    deadline = time.monotonic() + 30
    while len(_stubs(server)) != count:  # the previous load's stubs exit a moment after its unload
        assert time.monotonic() < deadline, f"{len(_stubs(server))} stubs, not {count}"
        time.sleep(0.05)
    return config


def _stubs(server: TritonServer) -> list:
    return [p for p in backend_processes(server.pid) if p.model == COSTLY.name]


def _throughput(server: TritonServer, concurrency: int) -> float:
    signature = signature_from_config(server.control().model_config(COSTLY.name))
    window = LoadGenerator(server.http_address, signature).run(1, concurrency, 1.5)
    assert window.error_count == 0, window.error_messages
    return window.success_count / window.elapsed_seconds


def test_dynamic_batching_pays_because_a_batch_has_a_fixed_cost(server: TritonServer) -> None:
    _config(server, dynamic=False)
    alone = _throughput(server, 8)
    _config(server, dynamic=True)
    batched = _throughput(server, 8)

    # One item per execute: ~21 ms each. Batched eight at a time: ~28 ms per eight.
    assert batched > 2.5 * alone, f"{batched:.0f}/s batched against {alone:.0f}/s"


def test_instances_execute_side_by_side(server: TritonServer) -> None:
    def busy_instances(concurrency: int) -> float:
        """Triton's summed execution time over the window's length: how many instances were busy at once."""
        before = TritonCounters.from_statistics(server.control().statistics(COSTLY.name))
        signature = signature_from_config(server.control().model_config(COSTLY.name))
        window = LoadGenerator(server.http_address, signature).run(1, concurrency, 1.5)
        served = TritonCounters.from_statistics(server.control().statistics(COSTLY.name)) - before
        return served.stage_nanoseconds[2] / 1e9 / window.elapsed_seconds

    _config(server, count=1)
    one = busy_instances(2)
    _config(server, count=2)
    two = busy_instances(2)

    # Counted as the time each execution took, not CPU time: this holds on a busy machine too,
    # where the two share what CPU they get (the cost is CPU time, so they go no faster than the cores).
    assert one < 1.1 and two > 1.6, f"{one:.2f} busy at once with one instance, {two:.2f} with two"


def test_memory_grows_with_the_instance_count(server: TritonServer) -> None:
    def footprint_bytes() -> int:
        return sum(psutil.Process(p.pid).memory_info().rss for p in _stubs(server))

    _config(server, count=1)
    one = footprint_bytes()
    _config(server, count=3)
    three = footprint_bytes()

    # Each instance is its own stub holding its own 48 MiB (and the stub's own ~45 MiB).
    assert three == pytest.approx(3 * one, rel=0.15)
    assert three - one >= 2 * COSTLY.footprint_bytes
