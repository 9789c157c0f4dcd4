"""Which measured point stands for a model in the profile the planner reads.

The objective is the article's: the highest throughput the model reaches, here within optional
latency and memory limits. Points with errors never qualify. Ties go to the point that needs less
memory, then to the lower p99: the planner packs by memory, so a cheaper equal point is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from gpupack.profiler.stats import PointResult, PointStatus
from gpupack.units import format_bytes


@dataclass(frozen=True)
class Limits:
    latency_p99_seconds: float | None = None
    memory_bytes: int | None = None

    def allow(self, point: PointResult) -> bool:
        if self.latency_p99_seconds is not None and (
            point.latencies is None or point.latencies.p99_seconds > self.latency_p99_seconds
        ):
            return False
        if self.memory_bytes is not None and (point.peak_memory_bytes or 0) > self.memory_bytes:
            return False
        return True


def choose_point(points: Iterable[PointResult], limits: Limits = Limits()) -> PointResult | None:
    """The highest-throughput point within ``limits``, or None when no point qualifies."""
    candidates = [
        p for p in points
        if p.status in (PointStatus.OK, PointStatus.OVER_LATENCY_BOUND) and p.request_count > 0 and limits.allow(p)
    ]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda p: (p.throughput_per_second, -(p.peak_memory_bytes or 0), -(p.latencies.p99_seconds if p.latencies else 0.0)),
    )


def why_no_point(points: Iterable[PointResult], limits: Limits) -> str:
    """Why :func:`choose_point` found nothing, in the user's units: what the profile says instead."""
    served = [p for p in points if p.status is not PointStatus.ERRORS and p.request_count > 0]
    if not served:
        return "no point was served without failed requests"
    p99s = [p.latencies.p99_seconds for p in served if p.latencies is not None]
    if limits.latency_p99_seconds is not None and p99s and min(p99s) > limits.latency_p99_seconds:
        return (f"p99 {min(p99s) * 1000:.1f} ms at best, over the {limits.latency_p99_seconds * 1000:g} ms budget "
                f"at every load measured")
    memory = [p.peak_memory_bytes or 0 for p in served]
    if limits.memory_bytes is not None:
        return (f"peak memory {format_bytes(min(memory))} at best, over --max-memory "
                f"{format_bytes(limits.memory_bytes)} at every point within the budget")
    return "no point qualifies"
