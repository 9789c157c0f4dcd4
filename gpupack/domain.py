"""The few types every part of gpupack speaks: resources, devices, model footprints, placements.

The exporter produces footprints, the rules engine judges them against devices, the scheduler
moves them between devices. Keeping these here, frozen, is what lets data flow one way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping


class Resource(str, enum.Enum):
    """A dimension a device has a capacity in and a model has a peak in.

    On a ``cpu:<server>`` device (CPU-only Triton), ``gpu_memory`` is that device's memory
    (the server's process-tree RSS against its budget) and ``gpu_utilization`` its CPU share:
    the same questions, answered by the host backend.
    """

    GPU_MEMORY = "gpu_memory"
    GPU_UTILIZATION = "gpu_utilization"
    MEMORY_BANDWIDTH_UTILIZATION = "memory_bandwidth_utilization"

    @property
    def is_bytes(self) -> bool:
        return self is Resource.GPU_MEMORY

    @property
    def profile_field(self) -> str:
        """Column name in profile files and JSON APIs."""
        return {
            Resource.GPU_MEMORY: "peak_gpu_memory_bytes",
            Resource.GPU_UTILIZATION: "peak_gpu_utilization_ratio",
            Resource.MEMORY_BANDWIDTH_UTILIZATION: "peak_memory_bandwidth_utilization_ratio",
        }[self]

    @property
    def short_name(self) -> str:
        """The word people type and read for it: ``memory``, ``utilization``, ``bandwidth``."""
        return {
            Resource.GPU_MEMORY: "memory",
            Resource.GPU_UTILIZATION: "utilization",
            Resource.MEMORY_BANDWIDTH_UTILIZATION: "bandwidth",
        }[self]

    @classmethod
    def parse(cls, name: str) -> "Resource":
        for resource in cls:
            if name in (resource.short_name, resource.value):
                return resource
        known = ", ".join(f"{r.short_name} ({r.value})" for r in cls)
        raise ValueError(f"unknown resource {name!r} (known: {known})")


def _frozen_map(values: Mapping | None) -> Mapping:
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class Device:
    """Something models are placed on: a GPU (UUID ``GPU-…``/``MIG-…``) or ``cpu:<server>``."""

    name: str
    capacity: Mapping[Resource, float]
    labels: Mapping[str, str] = field(default_factory=dict)
    cost: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "capacity", _frozen_map(self.capacity))
        object.__setattr__(self, "labels", _frozen_map(self.labels))

    def capacity_of(self, resource: Resource) -> float:
        """Ratios have capacity 1 unless told otherwise; memory must be known."""
        if resource in self.capacity:
            return self.capacity[resource]
        if resource.is_bytes:
            raise KeyError(f"device {self.name} has no known {resource.value} capacity")
        return 1.0


@dataclass(frozen=True)
class ModelFootprint:
    """What one model needs at its peak, excluding the server baseline it shares with others."""

    model: str
    peaks: Mapping[Resource, float]
    version: str | None = None
    batch_size: int | None = None
    concurrency: int | None = None
    throughput_per_second: float | None = None
    latency_p99_seconds: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "peaks", _frozen_map(self.peaks))

    def peak(self, resource: Resource) -> float:
        return self.peaks.get(resource, 0.0)


@dataclass(frozen=True)
class Placement:
    """Which devices each model is loaded on (more than one for replicas)."""

    assignments: Mapping[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "assignments", _frozen_map({m: tuple(sorted(set(d))) for m, d in self.assignments.items()})
        )

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> "Placement":
        by_model: dict[str, set[str]] = {}
        for model, device in pairs:
            by_model.setdefault(model, set()).add(device)
        return cls({m: tuple(d) for m, d in by_model.items()})

    def models_on(self, device: str) -> tuple[str, ...]:
        return tuple(sorted(m for m, devices in self.assignments.items() if device in devices))

    def devices_used(self) -> tuple[str, ...]:
        return tuple(sorted({d for devices in self.assignments.values() for d in devices}))

    def pairs(self) -> frozenset[tuple[str, str]]:
        return frozenset((m, d) for m, devices in self.assignments.items() for d in devices)
