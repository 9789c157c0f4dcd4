"""What one sample attributes: per-device and per-model usage, and how a device's utilisation that
no process measures is split among its models by their share of Triton compute time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from gpupack.exporter.triton_source import TritonReading

ModelKey = tuple[str, str]  # (model, version)


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    device: str
    kind: str  # gpu, mig, cpu
    name: str
    index: int | None
    servers: tuple[str, ...]
    capacity_bytes: int | None
    memory_used_bytes: int | None
    utilization_ratio: float | None = None
    memory_bandwidth_utilization_ratio: float | None = None
    power_watts: float | None = None
    temperature_celsius: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)  # a thousand or more per sample: no per-instance dict
class ModelUsage:
    server: str
    model: str
    version: str
    device: str
    memory_bytes: int | None = None
    memory_source: str | None = None
    utilization_ratio: float | None = None
    utilization_source: str | None = None
    loaded: bool = True  # False: Triton does not list it READY (loading, unloading), yet its process holds memory



def compute_shares(triton: TritonReading | None, previous: TritonReading | None) -> dict[ModelKey, float]:
    """Each model's compute seconds in the last Triton interval (models present in both readings)."""
    if triton is None or previous is None:
        return {}
    before = {(m.model, m.version): m.compute_seconds for m in previous.models}
    return {
        (m.model, m.version): max(0.0, m.compute_seconds - before[(m.model, m.version)])
        for m in triton.models
        if (m.model, m.version) in before
    }


def apportion(models: list[ModelUsage], device_ratio: float | None, shares: Mapping[ModelKey, float]) -> list[ModelUsage]:
    """Give models without a measured utilisation their compute-time share of what is left."""
    if device_ratio is None:
        return models
    measured = sum(m.utilization_ratio or 0.0 for m in models if m.utilization_source == "process")
    left = max(0.0, device_ratio - measured)
    unmeasured = [m.utilization_source is None and (m.model, m.version) in shares for m in models]
    total = sum(shares[(m.model, m.version)] for m, pick in zip(models, unmeasured) if pick)
    result = []
    for m, pick in zip(models, unmeasured):
        if pick:
            share = shares[(m.model, m.version)] / total if total > 0 else 0.0
            # Not dataclasses.replace: it introspects the fields, and this runs per model per sample.
            m = ModelUsage(m.server, m.model, m.version, m.device, m.memory_bytes, m.memory_source,
                           left * share, "apportioned", m.loaded)
        result.append(m)
    return result

