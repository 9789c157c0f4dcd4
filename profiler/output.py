"""A sweep as a profile file (:mod:`gpupack.profiles`): what the planner reads next.

Per model, the chosen point is the model's entry and every usable point goes under ``points``.
Points with failed requests stay out of the file: their peaks describe a broken run, and the
planner must not see them as a model's needs (they are in the table and ``--report``).

A configuration search adds, per model, a ``configs:`` list of every configuration measured (the
demand-aware planner reads it); the model's entry stays one chosen peak, so older readers and
``gpupack plan`` see the profile they always did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from gpupack.domain import ModelFootprint, Resource
from gpupack.profiler.rank import MeasuredConfig, Ranked
from gpupack.profiler.sampler import Peaks
from gpupack.profiler.search import ModelSearch
from gpupack.profiler.stats import PointResult, PointStatus
from gpupack.profiler.sweep import SweepResult
from gpupack.profiles import Profile, write_profile


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
                      recommended: Mapping[str, Ranked]) -> tuple[Profile, dict[str, list[dict[str, Any]]]]:
    """The profile (each model's entry: its recommended config's best point, and that config's
    points) and, per model, every measured config in the ``configs:`` form."""
    profile = Profile(
        server_baseline=_baseline(result.baseline or Peaks()),
        models=tuple(_footprint(recommended[o.model].point) for o in result.models if o.model in recommended),
        points={model: tuple(_footprint(p) for p in ranked.config.points
                             if p.status is not PointStatus.ERRORS and p.peak_memory_bytes is not None)
                for model, ranked in recommended.items()},
    )
    configs = {model: [config_entry(c) for c in search.configs if not c.failure] for model, search in searches.items()}
    return profile, configs


def config_entry(config: MeasuredConfig) -> dict[str, Any]:
    """One measured config as the planner of demand reads it: base units, points by throughput."""
    entry: dict[str, Any] = {
        "name": config.name,
        "instance_count": config.variant.instance_count,
        "max_batch_size": config.variant.max_batch_size,
        "dynamic_batching": config.variant.batching.enabled,
    }
    if config.variant.batching.enabled:
        entry["max_queue_delay_seconds"] = config.variant.batching.max_queue_delay_seconds
    if config.peak_memory_bytes is not None:
        entry[Resource.GPU_MEMORY.profile_field] = int(config.peak_memory_bytes)
    usable = [p for p in config.points if p.status is not PointStatus.ERRORS and p.latencies is not None]
    entry["points"] = [_config_point(p) for p in sorted(usable, key=lambda p: p.throughput_per_second)]
    return entry


def _config_point(point: PointResult) -> dict[str, Any]:
    assert point.latencies is not None
    values: dict[str, Any] = {
        "concurrency": point.concurrency,
        "throughput_per_second": round(point.throughput_per_second, 3),
        "latency_p50_seconds": point.latencies.p50_seconds,
        "latency_p99_seconds": point.latencies.p99_seconds,
    }
    for resource, value in ((Resource.GPU_UTILIZATION, point.peak_utilization_ratio),
                            (Resource.MEMORY_BANDWIDTH_UTILIZATION, point.peak_memory_bandwidth_utilization_ratio)):
        if value is not None:
            values[resource.profile_field] = value
    return values


def write_search_profile(profile: Profile, configs: Mapping[str, list[dict[str, Any]]], path: str | Path) -> None:
    """:func:`write_profile`, then each model's ``configs:`` beside its entry (YAML and JSON; a CSV
    profile has one row per model and no room for them)."""
    write_profile(profile, path)
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return
    text = path.read_text(encoding="utf-8")
    document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    for entry in document["models"]:
        if configs.get(entry["model"]):
            entry["configs"] = configs[entry["model"]]
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
