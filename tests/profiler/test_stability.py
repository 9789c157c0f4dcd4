"""A point is measured in short windows until three in a row agree (perf_analyzer's rule), at most
ten; a model is warmed up once per load, not before every point."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpupack.profiler.loadgen import LoadWindow
from gpupack.profiler.sampler import Peaks
from gpupack.profiler.stats import MAX_WINDOWS, Stability, TritonCounters, WindowSeries
from gpupack.profiler.sweep import Sweep, SweepPlan

from tests.profiler.conftest import gpupack
from tests.profiler.test_sweep import FakeControl, FakeProbe

TEN_PERCENT = Stability(window_seconds=0.5, tolerance_ratio=0.10)


def _window(requests: int, latency_seconds: float = 0.01, errors: int = 0) -> LoadWindow:
    return LoadWindow(1, 4, 0.5, (latency_seconds,) * requests, errors, ("boom",) if errors else ())


def _measured(*windows: LoadWindow, stability: Stability = TEN_PERCENT) -> WindowSeries:
    """A series fed these windows (each served as the server counts it) until it is done."""
    served = 0
    series = WindowSeries("m", TritonCounters(0, 0, 0), stability)
    for window in windows:
        if series.done:
            break
        served += window.success_count
        series.add(window, TritonCounters(served, window.error_count, served))
    return series


def test_three_windows_that_agree_make_a_stable_point_of_their_requests_together() -> None:
    series = _measured(_window(100), _window(105), _window(96), _window(500))

    point = series.point(Peaks(), Peaks())

    assert series.done and point.stable and point.window_count == 3
    assert point.request_count == 301 and point.window_seconds == 1.5
    assert round(point.throughput_per_second, 1) == round(301 / 1.5, 1)
    assert point.triton_throughput_per_second == point.throughput_per_second


def test_a_slow_first_window_is_left_out_once_the_next_three_agree() -> None:
    series = _measured(_window(40, 0.05), _window(100), _window(104), _window(98), _window(500))

    point = series.point(Peaks(), Peaks())

    assert point.stable and point.window_count == 4
    assert point.request_count == 302  # the slow window's 40 are not in it, in the client's count or Triton's
    assert point.triton_throughput_per_second == point.throughput_per_second
    assert point.latencies is not None and point.latencies.p99_seconds == 0.01


def test_windows_apart_by_more_than_the_percentage_in_throughput_or_latency_are_not_stable() -> None:
    assert not TEN_PERCENT.agree([_window(100), _window(100), _window(112)])  # 12% apart in throughput
    assert not TEN_PERCENT.agree([_window(100), _window(100, 0.0115), _window(100)])  # 15% apart in latency
    assert TEN_PERCENT.agree([_window(100), _window(100, 0.0105), _window(109)])
    assert Stability(0.5, tolerance_ratio=0.20).agree([_window(100), _window(100, 0.0115), _window(112)])
    assert not TEN_PERCENT.agree([_window(100), _window(100)])  # two windows are not three
    assert not TEN_PERCENT.agree([_window(0), _window(0), _window(0)])  # nothing served is not a measurement


def test_windows_that_never_agree_stop_at_the_cap_and_the_point_says_it_is_not_stable() -> None:
    drifting = [_window(100 + 20 * n) for n in range(MAX_WINDOWS + 5)]

    series = _measured(*drifting)
    point = series.point(Peaks(), Peaks())

    assert len(series.windows) == MAX_WINDOWS == 10
    assert not point.stable and point.window_count == 10
    assert point.request_count == sum(w.success_count for w in drifting[7:10])  # the last three


def test_a_window_with_failed_requests_ends_the_point_at_once() -> None:
    series = _measured(_window(100), _window(90, errors=2), _window(100), _window(100))

    point = series.point(Peaks(), Peaks())

    assert len(series.windows) == 2 and point.error_count == 2 and not point.usable


@dataclass
class RecordingLoad:
    """Serves 100 requests per window at 1 ms, and records each window's length."""

    control: FakeControl
    durations: list[float] = field(default_factory=list)

    def run(self, batch_size: int, concurrency: int, duration_seconds: float) -> LoadWindow:
        self.durations.append(duration_seconds)
        self.control.served += 100
        return LoadWindow(batch_size, concurrency, 1.0, (0.001,) * 100, 0, ())

    def run_at_rate(self, batch_size: int, rate_per_second: float, duration_seconds: float) -> LoadWindow:
        raise AssertionError("not a rate sweep")


def test_a_model_is_warmed_up_once_per_load_and_each_point_stops_after_three_steady_windows() -> None:
    control = FakeControl()
    loads: list[RecordingLoad] = []

    def loadgen(signature: object) -> RecordingLoad:
        loads.append(RecordingLoad(control))
        return loads[-1]

    plan = SweepPlan(("m", "n"), (1, 2), (1, 2, 4), duration_seconds=5.0, warmup_seconds=1.0)
    result = Sweep(plan, control, FakeProbe, loadgen, sleep=lambda s: None).run()

    assert [len(o.points) for o in result.models] == [6, 6]
    assert all(p.window_count == 3 and p.stable for o in result.models for p in o.points)
    for load in loads:  # one per model: a warm-up, then 6 points of three half-second windows
        assert load.durations == [1.0] + [0.5] * 18


def test_a_stability_percentage_that_is_not_a_positive_number_is_a_usage_error_naming_the_flag() -> None:
    for value, reason in (("x", "'x' is not a percentage (write 10 for 10%)"), ("0", "'0' must be above 0")):
        result = gpupack("profile", "--server", "127.0.0.1:1", "--models", "a", "--stability-percentage", value)

        assert result.returncode == 2
        assert "--stability-percentage: " in result.stderr and reason in result.stderr
