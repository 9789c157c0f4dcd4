"""A sweep as a profile file (:mod:`gpupack.profiles`): what the planner reads next.

Per model, the chosen point is the model's entry and every usable point goes under ``points``.
Points with failed requests stay out of the file: their peaks describe a broken run, and the
planner must not see them as a model's needs (they are in the table and ``--report``).

A configuration search adds, per model, a ``configs:`` list of every configuration measured (the
demand-aware planner reads it); the model's entry stays one chosen peak, so older readers and
``gpupack plan`` see the profile they always did.

Nothing measured is dropped: a model with no configuration within its constraints is written as
``{model: NAME, configs: [], rejected: [{name, reason}, ...]}``, so that ``gpupack plan`` refuses it
by name rather than planning as if it did not exist.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence


from gpupack.domain import ModelFootprint, Resource
from gpupack.profiler.rank import MeasuredConfig, Ranked
from gpupack.profiler.sampler import Peaks
from gpupack.profiler.search import ModelSearch
from gpupack.profiler.stats import PointResult, PointStatus
from gpupack.profiler.sweep import SweepResult
from gpupack.model_configs import ConfigPoint, ModelConfig
from gpupack.profiles import Profile, RejectedConfig, write_profile

# The name a rejection gives the model's config as its repository has it (a sweep without --search).
OWN_CONFIG = "own-config"
Rejections = Mapping[str, Sequence[tuple[str, str]]]  # model -> (config name, why it was rejected)


def write_whole_profile(profile: Profile, rejected: Rejections, path: str | Path, notes: Sequence[str] = ()) -> bool:
    """Write ``profile`` with the ``rejected`` models beside its own; ``notes`` go at the top as
    YAML comments (what the numbers were measured beside). Written whole or not at all.

    Returns False when the format cannot hold the rejected models (CSV: one peak per row); the
    measured models are written all the same."""
    path = Path(path)
    kept = not (rejected and path.suffix.lower() == ".csv")
    if kept:
        profile = dataclasses.replace(profile, rejected={
            **profile.rejected,
            **{model: tuple(RejectedConfig(name, reason) for name, reason in reasons) for model, reasons in rejected.items()},
        })
    staging = path.with_name(f".{path.stem}.writing{path.suffix}")
    write_profile(profile, staging, notes)
    os.replace(staging, path)
    return kept


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


def to_search_profile(result: SweepResult, searches: Mapping[str, ModelSearch],
                      recommended: Mapping[str, Ranked]) -> Profile:
    """The profile: each model's entry is its recommended config's best point, with that config's
    points, and every config measured goes under ``configs``."""
    return Profile(
        server_baseline=_baseline(result.baseline or Peaks()),
        models=tuple(_footprint(recommended[o.model].point) for o in result.models if o.model in recommended),
        points={model: tuple(_footprint(p) for p in ranked.config.points
                             if p.status is not PointStatus.ERRORS and p.peak_memory_bytes is not None)
                for model, ranked in recommended.items()},
        configs={model: tuple(model_config(c) for c in search.configs if not c.failure)
                 for model, search in searches.items()},
    )


def model_config(config: MeasuredConfig) -> ModelConfig:
    """One measured config as the planner of demand reads it: base units, points by throughput."""
    batching = config.variant.batching
    usable = [p for p in config.points if p.status is not PointStatus.ERRORS and p.latencies is not None]
    return ModelConfig(
        name=config.name,
        peak_gpu_memory_bytes=float(config.peak_memory_bytes or 0.0),
        points=tuple(_config_point(p) for p in sorted(usable, key=lambda p: p.throughput_per_second)),
        instance_count=config.variant.instance_count,
        max_batch_size=config.variant.max_batch_size,
        dynamic_batching=batching.enabled,
        max_queue_delay_seconds=batching.max_queue_delay_seconds if batching.enabled else None,
    )


def _config_point(point: PointResult) -> ConfigPoint:
    assert point.latencies is not None
    measured = ((Resource.GPU_UTILIZATION, point.peak_utilization_ratio),
                (Resource.MEMORY_BANDWIDTH_UTILIZATION, point.peak_memory_bandwidth_utilization_ratio))
    server = point.server_latency
    return ConfigPoint(
        throughput_per_second=round(point.throughput_per_second, 3),
        peaks={resource: value for resource, value in measured if value is not None},
        concurrency=point.concurrency,
        request_rate_per_second=point.request_rate_per_second,
        latency_p50_seconds=point.latencies.p50_seconds,
        latency_p99_seconds=point.latencies.p99_seconds,
        latency_breakdown_seconds={} if server is None else {
            "queue": server.queue_seconds, "compute_input": server.compute_input_seconds,
            "compute_infer": server.compute_infer_seconds, "compute_output": server.compute_output_seconds},
    )
