import pytest

from gpupack.domain import Resource
from gpupack.model_configs import ConfigPoint, ModelConfig
from gpupack.scheduler.demand.cost import capacity_per_second, copy_peaks

UTIL, BW, MEMORY = Resource.GPU_UTILIZATION, Resource.MEMORY_BANDWIDTH_UTILIZATION, Resource.GPU_MEMORY
CONFIG = ModelConfig(
    name="b8",
    peak_gpu_memory_bytes=3e9,
    points=(
        ConfigPoint(100, {UTIL: 0.2, BW: 0.1}, latency_p99_seconds=0.010),
        ConfigPoint(300, {UTIL: 0.5, BW: 0.3}, latency_p99_seconds=0.030),
        ConfigPoint(400, {UTIL: 0.9, BW: 0.4}, latency_p99_seconds=0.080),
    ),
)


def test_capacity_is_the_fastest_point_within_the_latency_budget():
    assert capacity_per_second(CONFIG, 0.050) == 300
    assert capacity_per_second(CONFIG, 0.010) == 100
    assert capacity_per_second(CONFIG, 0.005) == 0
    assert capacity_per_second(CONFIG, None) == 400


def test_a_point_without_a_measured_p99_never_counts_as_within_a_budget():
    unknown = ModelConfig("x", 1e9, (ConfigPoint(50, {UTIL: 0.5}),))
    assert capacity_per_second(unknown, 1.0) == 0
    assert capacity_per_second(unknown, None) == 50


def test_utilisation_is_interpolated_between_points_and_from_zero_below_the_first():
    assert copy_peaks(CONFIG, 50) == pytest.approx({MEMORY: 3e9, UTIL: 0.1, BW: 0.05})
    assert copy_peaks(CONFIG, 200) == pytest.approx({MEMORY: 3e9, UTIL: 0.35, BW: 0.2})
    assert copy_peaks(CONFIG, 300)[UTIL] == pytest.approx(0.5)


def test_memory_is_the_configurations_peak_whatever_the_rate():
    assert copy_peaks(CONFIG, 0)[MEMORY] == copy_peaks(CONFIG, 400)[MEMORY] == 3e9
    assert copy_peaks(CONFIG, 0)[UTIL] == 0
