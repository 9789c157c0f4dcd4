"""What one copy of a configuration costs when it serves a given rate: the demand planner's model.

- Memory is the configuration's peak, whatever the rate (weights and buffers are there either way).
- Utilisation and bandwidth are interpolated linearly over the measured points by throughput, from
  (0, 0) below the first point: a copy serving half a point's rate is assumed half as busy.
- A copy can serve at most the highest measured throughput whose p99 is within the budget; a point
  whose p99 was not measured is never assumed to be within a budget ("unknown" is not "fast").
"""

from __future__ import annotations

import numpy as np

from gpupack.domain import ModelFootprint, Resource
from gpupack.model_configs import POINT_RESOURCES, ConfigPoint, ModelConfig


def within_budget(point: ConfigPoint, budget_seconds: float | None) -> bool:
    if budget_seconds is None:
        return True
    return point.latency_p99_seconds is not None and point.latency_p99_seconds <= budget_seconds


def capacity_per_second(config: ModelConfig, budget_seconds: float | None) -> float:
    """The most one copy serves within the budget; 0 when no measured point meets it."""
    rates = [p.throughput_per_second for p in config.points
             if p.throughput_per_second is not None and within_budget(p, budget_seconds)]
    return max(rates, default=0.0)


def copy_peaks(config: ModelConfig, rate_per_second: float) -> dict[Resource, float]:
    """Memory, utilisation and bandwidth of one copy serving ``rate_per_second``."""
    return {r: float(v[0]) for r, v in copy_peaks_at(config, np.array([rate_per_second])).items()}


def copy_peaks_at(config: ModelConfig, rates_per_second: np.ndarray) -> dict[Resource, np.ndarray]:
    """:func:`copy_peaks` at many rates at once (a demand series' steps)."""
    peaks = {Resource.GPU_MEMORY: np.full(len(rates_per_second), float(config.peak_gpu_memory_bytes))}
    measured = [p for p in config.points if p.throughput_per_second is not None]
    throughputs = np.array([0.0] + [p.throughput_per_second or 0.0 for p in measured])
    for resource in POINT_RESOURCES:
        if any(resource in p.peaks for p in measured):
            values = np.array([0.0] + [p.peak(resource) for p in measured])
            peaks[resource] = np.interp(rates_per_second, throughputs, values)
    return peaks


def copy_footprint(model: str, config: ModelConfig, rate_per_second: float) -> ModelFootprint:
    """One copy as the placement solver sees it: a footprint at the rate it serves."""
    return ModelFootprint(model=model, peaks=copy_peaks(config, rate_per_second), throughput_per_second=rate_per_second)
