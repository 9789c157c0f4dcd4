"""A sweep as a profile file (:mod:`gpupack.profiles`): what the planner reads next.

Per model, the chosen point is the model's entry and every usable point goes under ``points``.
Points with failed requests stay out of the file: their peaks describe a broken run, and the
planner must not see them as a model's needs (they are in the table and ``--report``).
"""

from __future__ import annotations

from typing import Mapping

from gpupack.domain import ModelFootprint, Resource
from gpupack.profiler.sampler import Peaks
from gpupack.profiler.stats import PointResult, PointStatus
from gpupack.profiler.sweep import SweepResult
from gpupack.profiles import Profile


def to_profile(result: SweepResult, chosen: Mapping[str, PointResult]) -> Profile:
    points = {
        outcome.model: tuple(_footprint(p) for p in outcome.points
                             if p.status is not PointStatus.ERRORS and p.peak_memory_bytes is not None)
        for outcome in result.models
    }
    models = tuple(_footprint(chosen[o.model]) for o in result.models if o.model in chosen)
    return Profile(
        server_baseline=_baseline(result.baseline or Peaks()),
        models=models,
        points={model: found for model, found in points.items() if found},
    )


def _baseline(peaks: Peaks) -> dict[Resource, float]:
    values = {
        Resource.GPU_MEMORY: peaks.memory_bytes,
        Resource.GPU_UTILIZATION: peaks.utilization_ratio,
        Resource.MEMORY_BANDWIDTH_UTILIZATION: peaks.memory_bandwidth_utilization_ratio,
    }
    return {resource: float(value) for resource, value in values.items() if value is not None}


def _footprint(point: PointResult) -> ModelFootprint:
    values = {
        Resource.GPU_MEMORY: point.peak_memory_bytes,
        Resource.GPU_UTILIZATION: point.peak_utilization_ratio,
        Resource.MEMORY_BANDWIDTH_UTILIZATION: point.peak_memory_bandwidth_utilization_ratio,
    }
    return ModelFootprint(
        model=point.model,
        peaks={resource: float(value) for resource, value in values.items() if value is not None},
        batch_size=point.batch_size,
        concurrency=point.concurrency,
        throughput_per_second=round(point.throughput_per_second, 3),
        latency_p99_seconds=point.latencies.p99_seconds if point.latencies else None,
    )
