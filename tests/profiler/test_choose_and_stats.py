"""Which point stands for a model, and how a window becomes a point."""

from __future__ import annotations

from gpupack.profiler.choose import Limits, choose_point
from gpupack.profiler.loadgen import LoadWindow
from gpupack.profiler.report import format_summary
from gpupack.profiler.sampler import Peaks
from gpupack.profiler.stats import PointResult, PointStatus, TritonCounters, measure_point
from gpupack.profiler.sweep import ModelOutcome, SweepResult

MIB = 2**20


def _point(batch: int, concurrency: int, requests: int, *, errors: int = 0, latency: float = 0.01,
           memory: int = 100 * MIB, triton_extra: int = 0) -> PointResult:
    window = LoadWindow(batch, concurrency, 1.0, (latency,) * requests, errors, ("boom",) if errors else ())
    before = TritonCounters(0, 0, 0)
    after = TritonCounters(requests, errors, requests * batch + triton_extra)
    return measure_point("m", window, before, after, Peaks(memory + 30 * MIB, 0.5), Peaks(30 * MIB, 0.0))


def test_point_reports_inferences_per_second_peak_above_baseline_and_tritons_difference() -> None:
    point = _point(batch=2, concurrency=1, requests=100, triton_extra=4)

    assert point.throughput_per_second == 200
    assert point.triton_throughput_per_second == 204
    assert round(point.throughput_difference_ratio, 3) == 0.02
    assert point.peak_memory_bytes == 100 * MIB
    assert point.status is PointStatus.OK


def test_point_with_failed_requests_is_marked_and_never_chosen_even_when_fastest() -> None:
    broken = _point(4, 4, 1000, errors=3)
    good = _point(1, 1, 100)

    assert broken.status is PointStatus.ERRORS and broken.error_count == 3
    assert choose_point([broken, good]) is good


def test_fastest_point_within_latency_and_memory_limits_is_chosen() -> None:
    slow_but_fast = _point(4, 4, 1000, latency=0.2)
    big = _point(2, 4, 800, memory=900 * MIB)
    fits = _point(2, 2, 600)

    assert choose_point([slow_but_fast, big, fits]) is slow_but_fast
    assert choose_point([slow_but_fast, big, fits], Limits(latency_p99_seconds=0.05)) is big
    assert choose_point([slow_but_fast, big, fits], Limits(0.05, memory_bytes=512 * MIB)) is fits
    assert choose_point([slow_but_fast], Limits(latency_p99_seconds=0.05)) is None


def test_summary_marks_the_chosen_point_and_says_why_a_point_is_not_used() -> None:
    good, broken = _point(1, 1, 100), _point(1, 2, 50, errors=2)
    result = SweepResult(Peaks(30 * MIB, 0.01), [ModelOutcome("m", [good, broken], stopped="2 failed requests")])

    text = format_summary(result, {"m": good})

    assert "Server alone: max memory 30.0 MiB, max utilisation 1%" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("m ")]
    assert rows[0][:4] == ["m", "*", "1", "1"] and rows[0][-1] == "ok"
    assert rows[1][:3] == ["m", "1", "2"] and rows[1][-1] == "ERRORS"
    assert "m batch 1 concurrency 2: 2 failed requests (numbers not used): boom" in text
