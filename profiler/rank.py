"""Which measured configurations meet the user's constraints, how they rank, and why the rest fail.

A configuration stands for its best point: of its points without errors and within the p99
budget, the lightest load whose throughput is within the saturation margin of the highest (past
the knee more load only queues: noise decides which saturated point is fastest, and the lightest
has the p99 that serving would see). Its memory is its peak over *all* its points (a config that
once needs more memory needs it on the device). The objective scores that point: throughput, or
throughput per GiB of the config's peak memory (packing more models per device).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from gpupack.profiler.stats import PointResult, PointStatus
from gpupack.profiler.variants import Variant
from gpupack.units import format_bytes

GIB = 2**30
# A step up in load must add this much throughput to count as growth; less is saturation.
SATURATION_GAIN_RATIO = 0.05
OBJECTIVES = ("throughput", "throughput-per-gib")


@dataclass
class MeasuredConfig:
    """One variant as measured: the config it was loaded with and its points in measured order."""

    variant: Variant
    config: dict = field(default_factory=dict)
    points: list[PointResult] = field(default_factory=list)
    failure: str | None = None  # it did not load, or a point had failed requests
    stopped: str | None = None  # why its load search ended (saturated, over budget)

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def peak_memory_bytes(self) -> int | None:
        readings = [p.peak_memory_bytes for p in self.points if p.peak_memory_bytes is not None]
        return max(readings) if readings else None


@dataclass(frozen=True)
class Constraints:
    latency_p99_seconds: float | None = None
    min_throughput_per_second: float | None = None
    max_memory_bytes: int | None = None
    objective: str = "throughput"

    def best_point(self, config: MeasuredConfig) -> PointResult | None:
        # A rate served short is past saturation: its latencies leave out the sends it dropped.
        usable = [p for p in config.points if p.status is not PointStatus.ERRORS and p.request_count > 0
                  and p.latencies is not None and not p.short_of_rate
                  and (self.latency_p99_seconds is None or p.latencies.p99_seconds <= self.latency_p99_seconds)]
        if not usable:
            return None
        top = max(p.throughput_per_second for p in usable)
        saturated = [p for p in usable if p.throughput_per_second * (1 + SATURATION_GAIN_RATIO) >= top]
        return min(saturated, key=lambda p: (p.load.sort_key, p.latencies.p99_seconds if p.latencies else 0.0))

    def score(self, config: MeasuredConfig) -> float | None:
        """The objective at the config's best point; None when it misses the budget or memory."""
        return None if self.rejection(config) else self.objective_value(config)

    def objective_value(self, config: MeasuredConfig) -> float | None:
        point = self.best_point(config)
        if point is None:
            return None
        if self.objective == "throughput":
            return point.throughput_per_second
        memory = config.peak_memory_bytes
        return point.throughput_per_second / (memory / GIB) if memory else None

    def rejection(self, config: MeasuredConfig) -> str | None:
        """Why the config cannot be recommended, in the user's units; None when it can."""
        if config.failure:
            return config.failure
        point = self.best_point(config)
        if point is None:
            if config.points and all(p.short_of_rate for p in config.points):
                return f"saturated already at {config.points[0].load}: offer lower --request-rate values"
            p99s = [p.latencies.p99_seconds for p in config.points if p.latencies is not None]
            if self.latency_p99_seconds is not None and p99s:
                return (f"p99 {min(p99s) * 1000:.1f} ms at its lightest load is over the "
                        f"{self.latency_p99_seconds * 1000:g} ms budget")
            return "no point was measured"
        memory = config.peak_memory_bytes
        if self.max_memory_bytes is not None and (memory or 0) > self.max_memory_bytes:
            return f"peak memory {format_bytes(memory or 0)} is over --max-memory {format_bytes(self.max_memory_bytes)}"
        if self.min_throughput_per_second is not None and point.throughput_per_second < self.min_throughput_per_second:
            return (f"throughput {point.throughput_per_second:.1f}/s within the budget is under "
                    f"--min-throughput {self.min_throughput_per_second:g}/s")
        if self.objective == "throughput-per-gib" and not memory:
            return "no memory reading to score throughput per GiB"
        return None


@dataclass(frozen=True)
class Ranked:
    config: MeasuredConfig
    point: PointResult  # its best point within the budget
    score: float


def rank(configs: Sequence[MeasuredConfig], constraints: Constraints) -> tuple[list[Ranked], list[tuple[MeasuredConfig, str]]]:
    """(configs meeting the constraints, best first; the others with the reason each failed).

    Ties go to the config needing less memory: the planner packs by memory."""
    ranked, rejected = [], []
    for config in configs:
        reason = constraints.rejection(config)
        point = constraints.best_point(config)
        score = constraints.objective_value(config)
        if reason is None and point is not None and score is not None:
            ranked.append(Ranked(config, point, score))
        else:
            rejected.append((config, reason or "not scored"))
    ranked.sort(key=lambda r: (-r.score, r.config.peak_memory_bytes or 0))
    return ranked, rejected
