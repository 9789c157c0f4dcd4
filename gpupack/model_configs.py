"""A model's measured configurations: what the profiler's configuration search leaves in a profile.

Each configuration (instance count, batch size, dynamic batching) has one memory peak, whatever
the load, and a list of measured points, sorted by throughput: how busy the device was and how
slow requests were at each load. The demand planner reads these to choose a configuration and a
copy count per model. A model profiled without a search is one configuration whose single point
is its peak, so every profile can be planned for demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from gpupack.domain import ModelFootprint, Resource

# Resources a point measures; memory belongs to the configuration, not to a load.
POINT_RESOURCES = (Resource.GPU_UTILIZATION, Resource.MEMORY_BANDWIDTH_UTILIZATION)
DEFAULT_CONFIG_NAME = "profiled"


@dataclass(frozen=True)
class ConfigPoint:
    """One measured load on one configuration."""

    throughput_per_second: float | None
    peaks: Mapping[Resource, float]  # utilisation and bandwidth ratios at this load
    concurrency: int | None = None
    request_rate_per_second: float | None = None
    latency_p50_seconds: float | None = None
    latency_p99_seconds: float | None = None
    latency_breakdown_seconds: Mapping[str, float] = field(default_factory=dict)  # queue, compute_input, ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "peaks", MappingProxyType(dict(self.peaks)))
        object.__setattr__(self, "latency_breakdown_seconds", MappingProxyType(dict(self.latency_breakdown_seconds)))

    def peak(self, resource: Resource) -> float:
        return self.peaks.get(resource, 0.0)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    peak_gpu_memory_bytes: float
    points: tuple[ConfigPoint, ...]  # sorted by throughput
    instance_count: int | None = None
    max_batch_size: int | None = None
    dynamic_batching: bool | None = None
    max_queue_delay_seconds: float | None = None


def single_point_config(model: ModelFootprint) -> ModelConfig:
    """The configuration a profile without ``configs`` describes: the model at its peak."""
    point = ConfigPoint(
        throughput_per_second=model.throughput_per_second,
        peaks={r: model.peaks[r] for r in POINT_RESOURCES if r in model.peaks},
        concurrency=model.concurrency,
        latency_p99_seconds=model.latency_p99_seconds,
    )
    return ModelConfig(
        name=DEFAULT_CONFIG_NAME,
        peak_gpu_memory_bytes=model.peak(Resource.GPU_MEMORY),
        points=(point,),
        max_batch_size=model.batch_size,
    )


def config_document(config: ModelConfig) -> dict:
    """The profile-file form, in base units, leaving out what was not measured."""
    document: dict = {"name": config.name}
    for key in ("instance_count", "max_batch_size", "dynamic_batching", "max_queue_delay_seconds"):
        if getattr(config, key) is not None:
            document[key] = getattr(config, key)
    document["peak_gpu_memory_bytes"] = int(config.peak_gpu_memory_bytes)
    document["points"] = [point_document(p) for p in config.points]
    return document


def point_document(point: ConfigPoint) -> dict:
    """One measured point as a profile writes it (a configuration's points, a colocation's members)."""
    document: dict = {}
    for key in ("concurrency", "request_rate_per_second", "throughput_per_second", "latency_p50_seconds",
                "latency_p99_seconds"):
        if getattr(point, key) is not None:
            document[key] = getattr(point, key)
    document.update({r.profile_field: v for r, v in point.peaks.items()})
    if point.latency_breakdown_seconds:
        document["latency_breakdown_seconds"] = dict(point.latency_breakdown_seconds)
    return document
