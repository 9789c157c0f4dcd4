"""Peaks the sampler records: short spikes on a real server, GPUs through the NVML source."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

from gpupack.servers import ServerConfig
from gpupack.measurement.host import HostSource
from gpupack.measurement.nvml import GpuReading
from gpupack.profiler.control import ServerControl
from gpupack.profiler.loadgen import LoadGenerator, signature_from_config
from gpupack.profiler.sampler import HostProbe, NvmlProbe, PeakSampler
from gpupack.testing import TritonServer

from tests.profiler.conftest import SPIKY

MIB = 2**20


@pytest.mark.triton
def test_a_spike_shorter_than_a_second_is_in_the_peak(
    start_triton: Callable[..., TritonServer], profile_repository: Path
) -> None:
    server = start_triton(models=[SPIKY.name], repository=profile_repository)
    probe = HostProbe(HostSource(ServerConfig("s", server.http_url, pid=server.pid)))
    loaded = probe.read().memory_bytes
    control = ServerControl(server.http_address)
    loadgen = LoadGenerator(server.http_address, signature_from_config(control.config(SPIKY.name)))

    with PeakSampler(probe) as sampler:
        loadgen.run(batch_size=1, concurrency=1, duration_seconds=0.3)
    time.sleep(0.1)

    spike_bytes = SPIKY.footprint_bytes * (SPIKY.spike_factor - 1)
    assert sampler.peaks.memory_bytes - loaded == pytest.approx(spike_bytes, rel=0.10)
    assert probe.read().memory_bytes - loaded < spike_bytes / 10
    assert sampler.peaks.utilization_ratio is not None


class FakeNvml:
    def read(self) -> tuple[GpuReading, ...]:
        return (
            GpuReading("GPU-a", "gpu", "H100", 0, memory_used_bytes=300 * MIB, utilization_ratio=0.2,
                       memory_bandwidth_utilization_ratio=0.6),
            GpuReading("GPU-b", "gpu", "H100", 1, memory_used_bytes=200 * MIB, utilization_ratio=0.7,
                       memory_bandwidth_utilization_ratio=None),
        )


def test_gpus_add_up_in_memory_and_the_busiest_gives_utilisation() -> None:
    peaks = NvmlProbe(FakeNvml()).read()  # type: ignore[arg-type]

    assert peaks.memory_bytes == 500 * MIB
    assert peaks.utilization_ratio == 0.7
    assert peaks.memory_bandwidth_utilization_ratio == 0.6
