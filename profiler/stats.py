"""One measured point: client-side numbers, cross-checked against Triton's own counters.

A point is measured in short windows until it is stable, by perf_analyzer's rule
(``--stability-percentage``): the last three windows agree within the percentage, max over min,
in throughput and in mean latency; at most ten windows (its ``--max-trials``). The point is then
those last three windows together. A fixed long window either wastes time on a steady server or
averages a drift into one number; the rule stops as soon as the numbers stop moving, and says so
when they never did (:attr:`PointResult.stable`).

Throughput is inferences per second (requests x batch size), as in the article's Table 2. The
server's ``inference_count`` over the same window gives a second throughput; their difference is
kept in the point, not hidden. A point with failed requests is marked and keeps its raw numbers:
nothing averages it with the good ones, and :mod:`profiler.choose` never picks it.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from gpupack.profiler.loadgen import Load, LoadWindow
from gpupack.profiler.sampler import Peaks


class PointStatus(str, enum.Enum):
    OK = "ok"
    ERRORS = "errors"  # some requests failed: numbers shown, never used
    OVER_LATENCY_BOUND = "over_latency_bound"  # p99 above --latency-bound: the sweep stops here


# Served below this share of an offered rate (or any send dropped): the rate is past saturation.
RATE_SHORTFALL_RATIO = 0.1
_STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
AGREEING_WINDOWS = 3  # perf_analyzer's: the last three measurements must agree
MAX_WINDOWS = 10  # perf_analyzer's --max-trials default


@dataclass(frozen=True)
class Stability:
    """How a point is measured: windows of ``window_seconds`` until the last three agree within
    ``tolerance_ratio`` (0.1 is perf_analyzer's default 10%), at most ``max_windows`` of them."""

    window_seconds: float
    tolerance_ratio: float = 0.10
    max_windows: int = MAX_WINDOWS

    @classmethod
    def within(cls, duration_seconds: float, tolerance_ratio: float = 0.10) -> "Stability":
        """Windows sized so that a point never measures longer than ``duration_seconds``."""
        return cls(duration_seconds / MAX_WINDOWS, tolerance_ratio)

    @property
    def shortest_seconds(self) -> float:
        """What a stable point costs at best: the agreeing windows."""
        return self.window_seconds * min(AGREEING_WINDOWS, self.max_windows)

    def agree(self, windows: Sequence[LoadWindow]) -> bool:
        """The last three windows within the tolerance of each other, in throughput and mean latency."""
        last = windows[-AGREEING_WINDOWS:]
        if len(last) < AGREEING_WINDOWS or any(not w.latencies_seconds or w.elapsed_seconds <= 0 for w in last):
            return False
        throughputs = [w.success_count / w.elapsed_seconds for w in last]
        latencies = [sum(w.latencies_seconds) / w.success_count for w in last]
        return all(max(values) <= min(values) * (1 + self.tolerance_ratio) for values in (throughputs, latencies))


@dataclass(frozen=True)
class TritonCounters:
    """A model's cumulative counters from ``/v2/models/<m>/stats``."""

    success_count: int  # requests
    fail_count: int
    inference_count: int  # batch elements
    stage_nanoseconds: tuple[int, ...] = (0, 0, 0, 0)  # cumulative, per stage of _STAGES

    @classmethod
    def from_statistics(cls, stats: Mapping[str, Any]) -> "TritonCounters":
        inference = stats.get("inference_stats", {})
        return cls(
            success_count=int(inference.get("success", {}).get("count", 0)),
            fail_count=int(inference.get("fail", {}).get("count", 0)),
            inference_count=int(stats.get("inference_count", 0)),
            stage_nanoseconds=tuple(int(inference.get(stage, {}).get("ns", 0)) for stage in _STAGES),
        )

    def __sub__(self, other: "TritonCounters") -> "TritonCounters":
        return TritonCounters(self.success_count - other.success_count, self.fail_count - other.fail_count,
                              self.inference_count - other.inference_count,
                              tuple(a - b for a, b in zip(self.stage_nanoseconds, other.stage_nanoseconds)))


@dataclass(frozen=True)
class ServerLatency:
    """Where a request's time went inside Triton, mean per request over a window (its statistics)."""

    queue_seconds: float
    compute_input_seconds: float
    compute_infer_seconds: float
    compute_output_seconds: float

    @classmethod
    def of(cls, served: TritonCounters) -> "ServerLatency | None":
        if served.success_count <= 0:
            return None
        queue, compute_input, compute_infer, compute_output = (
            ns / served.success_count / 1e9 for ns in served.stage_nanoseconds)
        return cls(queue, compute_input, compute_infer, compute_output)


@dataclass(frozen=True)
class Latencies:
    p50_seconds: float
    p95_seconds: float
    p99_seconds: float

    @classmethod
    def of(cls, samples_seconds: Sequence[float]) -> "Latencies | None":
        if not samples_seconds:
            return None
        p50, p95, p99 = np.percentile(np.asarray(samples_seconds), [50, 95, 99])
        return cls(float(p50), float(p95), float(p99))


@dataclass(frozen=True)
class PointResult:
    model: str
    batch_size: int
    concurrency: int | None  # None at a fixed request rate
    status: PointStatus
    window_seconds: float
    request_count: int  # successful requests, client side
    error_count: int
    throughput_per_second: float  # inferences/s, client side
    triton_throughput_per_second: float  # the same window by Triton's inference_count
    latencies: Latencies | None
    peak_memory_bytes: int | None  # its backend processes' (else the device's above the server baseline)
    peak_utilization_ratio: float | None
    peak_memory_bandwidth_utilization_ratio: float | None
    errors: tuple[str, ...] = ()
    server_latency: ServerLatency | None = None
    request_rate_per_second: float | None = None  # the offered rate, when the load was a rate
    dropped_count: int = 0  # sends the open loop skipped, the server being a whole interval behind
    late_count: int = 0  # sends the open loop made over half an interval late
    window_count: int = 1  # windows measured, the unstable ones before the last three included
    stable: bool = True  # False: the windows never agreed within the cap (its numbers are the last three)

    @property
    def load(self) -> Load:
        return Load(self.concurrency, self.request_rate_per_second)

    @property
    def short_of_rate(self) -> bool:
        """Served noticeably less than the rate offered: the server is saturated at this rate."""
        if self.request_rate_per_second is None or self.window_seconds <= 0:
            return False
        achieved = self.request_count / self.window_seconds
        return self.dropped_count > 0 or achieved < self.request_rate_per_second * (1 - RATE_SHORTFALL_RATIO)

    @property
    def throughput_difference_ratio(self) -> float | None:
        """(Triton - client) / client; None when the client saw nothing to compare."""
        if self.throughput_per_second <= 0:
            return None
        return self.triton_throughput_per_second / self.throughput_per_second - 1.0

    @property
    def usable(self) -> bool:
        return self.status is PointStatus.OK


def measure_point(
    model: str,
    window: LoadWindow,
    counters_before: TritonCounters,
    counters_after: TritonCounters,
    peaks: Peaks,
    baseline: Peaks,
    latency_bound_seconds: float | None = None,
) -> PointResult:
    """Turn one window, the server's counters around it and the device's peaks into a point."""
    served = counters_after - counters_before
    seconds = window.elapsed_seconds
    latencies = Latencies.of(window.latencies_seconds)
    # A request the client saw fail is usually in Triton's fail count too: count it once.
    failed = max(window.error_count, served.fail_count)
    if failed:
        status = PointStatus.ERRORS
    elif latencies and latency_bound_seconds is not None and latencies.p99_seconds > latency_bound_seconds:
        status = PointStatus.OVER_LATENCY_BOUND
    else:
        status = PointStatus.OK
    return PointResult(
        model=model,
        batch_size=window.batch_size,
        concurrency=window.concurrency,
        status=status,
        window_seconds=seconds,
        request_count=window.success_count,
        error_count=failed,
        throughput_per_second=window.success_count * window.batch_size / seconds if seconds > 0 else 0.0,
        triton_throughput_per_second=served.inference_count / seconds if seconds > 0 else 0.0,
        latencies=latencies,
        peak_memory_bytes=_model_memory(peaks, baseline),
        peak_utilization_ratio=peaks.utilization_ratio,
        peak_memory_bandwidth_utilization_ratio=peaks.memory_bandwidth_utilization_ratio,
        errors=window.error_messages,
        server_latency=ServerLatency.of(served),
        request_rate_per_second=window.request_rate_per_second,
        dropped_count=window.dropped_count,
        late_count=window.late_count,
    )


class WindowSeries:
    """One point being measured window by window: :meth:`add` each window with the server's
    counters after it, until :attr:`done`; then :meth:`point` is the last three together.

    Windows must follow each other with no request in between (the load generator ends a window
    with nothing in flight), so the counters around the last three cover exactly their requests.
    Failed requests end the series at once: a point with errors is never used, however stable."""

    def __init__(self, model: str, counters_before: TritonCounters, stability: Stability) -> None:
        self.model = model
        self.stability = stability
        self.windows: list[LoadWindow] = []
        self._counters = [counters_before]

    def add(self, window: LoadWindow, counters_after: TritonCounters) -> None:
        self.windows.append(window)
        self._counters.append(counters_after)

    @property
    def stable(self) -> bool:
        return self.stability.agree(self.windows)

    @property
    def done(self) -> bool:
        failed = bool(self.windows) and (self.windows[-1].error_count > 0
                                         or (self._counters[-1] - self._counters[-2]).fail_count > 0)
        return failed or self.stable or len(self.windows) >= self.stability.max_windows

    def point(self, peaks: Peaks, baseline: Peaks, latency_bound_seconds: float | None = None) -> PointResult:
        last = self.windows[-AGREEING_WINDOWS:]
        result = measure_point(self.model, merge_windows(last), self._counters[-len(last) - 1], self._counters[-1],
                               peaks, baseline, latency_bound_seconds)
        return dataclasses.replace(result, window_count=len(self.windows), stable=self.stable)


def merge_windows(windows: Sequence[LoadWindow]) -> LoadWindow:
    """Consecutive windows of one load as one window: their times and requests added up."""
    first = windows[0]
    return LoadWindow(
        batch_size=first.batch_size,
        concurrency=first.concurrency,
        elapsed_seconds=sum(w.elapsed_seconds for w in windows),
        latencies_seconds=tuple(latency for w in windows for latency in w.latencies_seconds),
        error_count=sum(w.error_count for w in windows),
        error_messages=tuple(dict.fromkeys(m for w in windows for m in w.error_messages)),
        request_rate_per_second=first.request_rate_per_second,
        late_count=sum(w.late_count for w in windows),
        dropped_count=sum(w.dropped_count for w in windows),
    )


def _model_memory(peaks: Peaks, baseline: Peaks) -> int | None:
    """A model with backend processes of its own is charged what they held (per process); one
    without (an in-process backend, or a GPU seen only whole) what the device held above the baseline."""
    if peaks.backend_memory_bytes is not None:
        return peaks.backend_memory_bytes
    return _above(peaks.memory_bytes, baseline.memory_bytes)


def _above(value: int | None, baseline: int | None) -> int | None:
    if value is None:
        return None
    return max(0, value - (baseline or 0))
