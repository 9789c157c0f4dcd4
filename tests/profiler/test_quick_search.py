"""The concurrency search finds a variant's knee with few points and never trades the latency budget
for throughput; a quick search on real Triton measures a fraction of the old ramp's points."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpupack.profiler.loadgen import Load, LoadWindow
from gpupack.profiler.rank import Constraints, MeasuredConfig
from gpupack.profiler.sampler import Peaks
from gpupack.profiler.search import search_loads, start_index
from gpupack.profiler.stats import PointResult, TritonCounters, measure_point
from gpupack.profiler.variants import Batching, Variant
from gpupack.testing import TritonServer

from tests.profiler.conftest import SEARCHED, gpupack

CONCURRENCY = tuple(Load(concurrency=c) for c in range(1, 129))  # the search's default levels
# Ramping 1, 2, 4 ... per variant measured 41 points in the space below on a quiet machine (23 on
# a busy one, whose noise cut ramps short); the search takes two or three a configuration, 16 to 27
# in all on 2 busy cores. Two thirds of 41 leaves room for a noisy climb to try every configuration.
FEWER_THAN_THE_RAMP = 27


class Server:
    """Throughput grows with concurrency up to ``knee``, then stays; p99 is 1 ms per request in flight.
    Triton says each request executes for 1 ms and waits 1 ms per request in flight past the knee."""

    def __init__(self, knee: int, budget_seconds: float | None = None) -> None:
        self.knee = knee
        self.budget_seconds = budget_seconds
        self.measured: list[int] = []
        self.points: list[PointResult] = []

    def measure(self, index: int) -> PointResult:
        concurrency = CONCURRENCY[index].concurrency
        assert concurrency is not None
        self.measured.append(concurrency)
        requests = 10 * min(concurrency, self.knee)
        window = LoadWindow(1, concurrency, 1.0, (concurrency / 1000,) * requests, 0, ())
        queue_ns = requests * max(0, concurrency - self.knee) * 1_000_000
        served = TritonCounters(requests, 0, requests, (queue_ns, 0, requests * 1_000_000, 0))
        self.points.append(measure_point("m", window, TritonCounters(0, 0, 0), served, Peaks(), Peaks(),
                                         self.budget_seconds))
        return self.points[-1]

    def best(self) -> PointResult | None:
        """The point the ranking picks from those the search measured."""
        config = MeasuredConfig(Variant(1, None, 1, Batching(False)), {}, self.points)
        return Constraints(self.budget_seconds).best_point(config)


def test_doubling_from_one_stops_one_step_past_the_knee_measuring_a_handful_of_128_loads() -> None:
    server = Server(knee=24)

    reason = search_loads(CONCURRENCY, server.measure)

    assert server.measured == [1, 2, 4, 8, 16, 32, 64]
    assert reason == "saturated: throughput stopped growing at concurrency 32"
    assert server.best() is not None and server.best().concurrency == 32  # type: ignore[union-attr]


def test_a_search_started_near_the_knee_measures_three_points() -> None:
    server = Server(knee=24)

    search_loads(CONCURRENCY, server.measure, start=CONCURRENCY.index(Load(concurrency=16)))

    assert server.measured == [16, 32, 64]


def test_a_search_started_at_the_knee_takes_it_without_looking_below_when_nothing_queued() -> None:
    server = Server(knee=16)

    reason = search_loads(CONCURRENCY, server.measure, start=CONCURRENCY.index(Load(concurrency=16)))

    assert server.measured == [16, 32]
    assert reason == "saturated: throughput stopped growing at concurrency 16"


def test_a_search_started_past_the_knee_comes_down_to_it() -> None:
    server = Server(knee=12)  # at 64, requests queue 52 ms for a 1 ms execution

    reason = search_loads(CONCURRENCY, server.measure, start=CONCURRENCY.index(Load(concurrency=64)))

    assert server.measured == [64, 128, 32, 16, 8]
    assert reason == "saturated: throughput stopped growing at concurrency 16"


def test_the_budget_is_bisected_to_the_highest_load_within_it_and_never_passed() -> None:
    server = Server(knee=100, budget_seconds=0.020)  # p99 passes 20 ms above concurrency 20

    reason = search_loads(CONCURRENCY, server.measure)

    assert server.measured == [1, 2, 4, 8, 16, 32, 24, 20]
    assert reason == "p99 24.0 ms passed the budget at concurrency 24"
    best = server.best()
    assert best is not None and best.concurrency == 20 and best.latencies is not None
    assert best.latencies.p99_seconds <= 0.020
    # Stopping at the first load past the budget, as the ramp did, would have kept concurrency 16: 20% less.
    assert best.throughput_per_second == 200


def test_bisection_that_finds_the_knee_below_the_budget_keeps_the_load_before_it() -> None:
    server = Server(knee=16, budget_seconds=0.020)

    reason = search_loads(CONCURRENCY, server.measure)

    assert server.measured == [1, 2, 4, 8, 16, 32, 24, 20]  # 20 is within the budget but no faster than 16
    assert reason == "saturated: throughput stopped growing at concurrency 16"
    assert server.best().concurrency == 16  # type: ignore[union-attr]


def test_a_first_load_past_the_budget_is_halved_until_within_it_then_bisected() -> None:
    server = Server(knee=100, budget_seconds=0.020)

    search_loads(CONCURRENCY, server.measure, start=CONCURRENCY.index(Load(concurrency=64)))

    assert server.measured == [64, 32, 16, 24, 20]
    assert server.best().concurrency == 20  # type: ignore[union-attr]


def test_a_saturated_config_stands_for_its_lightest_load_that_serves_about_as_much() -> None:
    def point(concurrency: int, requests: int, p99_seconds: float) -> PointResult:
        window = LoadWindow(1, concurrency, 1.0, (p99_seconds,) * requests, 0, ())
        return measure_point("m", window, TritonCounters(0, 0, 0), TritonCounters(requests, 0, requests), Peaks(),
                             Peaks(), 0.1)

    # As measured on 2 busy cores: 16 in flight served 1% more than 8, at almost three times the p99.
    config = MeasuredConfig(Variant(2, None, 4, Batching(True)), {},
                            [point(8, 880, 0.0137), point(16, 889, 0.0366), point(4, 481, 0.0134)])

    best = Constraints(0.1).best_point(config)

    assert best is not None and best.concurrency == 8


def test_a_variant_starts_where_its_instances_batches_are_full() -> None:
    on, off = Batching(True, 0.0), Batching(False)

    assert CONCURRENCY[start_index(CONCURRENCY, Variant(2, None, 4, on))].concurrency == 8
    assert CONCURRENCY[start_index(CONCURRENCY, Variant(2, None, 4, off))].concurrency == 2
    listed = (Load(concurrency=1), Load(concurrency=2), Load(concurrency=4))
    assert start_index(listed, Variant(4, None, 8, on)) == 2  # the highest listed load below it
    rates = (Load(request_rate_per_second=50), Load(request_rate_per_second=100))
    assert start_index(rates, Variant(4, None, 8, on)) == 0


def _points(checkpoint: Path, model: str) -> dict[str, list[dict]]:
    configs = yaml.safe_load(checkpoint.read_text())["configs"][model]
    return {name: record["points"] for name, record in configs.items()}


@pytest.mark.timeout(600)
def test_a_quick_search_measures_a_fraction_of_the_old_ramps_points_and_still_recommends_a_config(
    server: TritonServer, tmp_path: Path
) -> None:
    model = SEARCHED[0].name
    out = tmp_path / "profile.yaml"

    result = gpupack("profile", "--server", server.http_url, "--models", model, "--search", "quick",
                     "--instances", "1,2", "--max-batch", "1,4", "--dynamic-batching", "off,on",
                     "--latency-budget", "100ms", "--duration", "2s", "--backend", "host", "--out", str(out),
                     timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    points = _points(Path(f"{out}.checkpoint.json"), model)
    measured = sum(len(p) for p in points.values())
    loads = {name: [p["concurrency"] for p in ps] for name, ps in points.items()}
    assert 0 < measured <= FEWER_THAN_THE_RAMP, loads
    # Each point measured until stable (or the cap): never one long window.
    assert all(3 <= p["window_count"] <= 10 for ps in points.values() for p in ps)
    entry = yaml.safe_load(out.read_text())["models"][0]
    assert entry["model"] == model and entry["latency_p99_seconds"] <= 0.1
    assert "<- recommended" in result.stdout
    assert server.ready_models() == []
