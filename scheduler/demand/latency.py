"""A latency-aware capacity: a device is full for a model when the model's p99, estimated at the
load the device reaches, would exceed its budget.

Utilisation is additive only as a first guess, and latency is not additive at all: queueing delay
grows without bound as load nears capacity, and a light model's requests wait behind its heavy
neighbours' ones. The model is the M/G/1 queue (Pollaczek-Khinchine): the copies on a device share
one server, each copy ``i`` sending ``lambda_i`` requests a second that each take ``S_i`` of it
(its utilisation at that rate over the rate), so a request waits on average

    W = sum_i lambda_i * S_i^2 / (2 * (1 - rho)),      rho = baseline + sum_i u_i

for everyone ahead of it, whoever sent them. A copy's p99 is estimated as its p99 without
queueing plus ``ln(100) * W`` (the tail of a wait that is roughly exponential at high load):

- the **p99 without queueing**, ``p99_0``, comes from its configuration's measured points: a point
  measured alone at rate ``x`` and utilisation ``u`` (so ``S = u / x``) with p99 ``p`` gives
  ``p - ln(100) * u * S / (2 * (1 - u))``; the largest over the points is taken;
- the copy then holds the device to ``ln(100) * R / 2 + B * rho <= B``, where ``R = sum_i u_i * S_i``
  and ``B = budget - p99_0``: a constraint linear in the copies placed, so each budgeted copy is
  one scoped limit over utilisation, which every solver already honours. Where the copy is not
  on the device the limit is lifted by a constant larger than any device's load.

Measured on the CPU harness (``bench/colocation.py``) it is optimistic: a device that other work
shares queues more than its planned load says, which is why ``plan --verify`` replays devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from gpupack.domain import Device, Resource
from gpupack.model_configs import ModelConfig
from gpupack.scheduler.packing.problem import ScopedLimit

UTIL = Resource.GPU_UTILIZATION
P99_PER_MEAN_WAIT = math.log(100)  # an exponential wait's p99 over its mean
# A point measured at (or above) saturation says little about its service time: read it as at 99%.
MOST_MEASURED_UTILIZATION = 0.99


@dataclass(frozen=True)
class Load:
    """One copy as the queue sees it: its share of the device and its second-moment load."""

    name: str  # the model (or option) as the problem names it
    utilization: float  # at the rate the copy serves
    rate_per_second: float

    @property
    def service_seconds(self) -> float:
        return self.utilization / self.rate_per_second if self.rate_per_second > 0 else 0.0

    @property
    def second_moment(self) -> float:
        """``lambda * S^2`` (deterministic service), the copy's part of every request's wait."""
        return self.utilization * self.service_seconds


@dataclass(frozen=True)
class LatencyCopy:
    load: Load
    p99_zero_seconds: float  # without queueing
    budget_seconds: float

    @property
    def room_seconds(self) -> float:
        """What queueing may add to the copy's p99 before it breaks its budget."""
        return self.budget_seconds - self.p99_zero_seconds

    def weight(self, other: Load) -> float:
        """What ``other`` counts against this copy's limit of 1 (``rho`` plus the wait it adds)."""
        return other.utilization + P99_PER_MEAN_WAIT * other.second_moment / (2 * self.room_seconds)

    def estimated_p99_seconds(self, loads: Sequence[Load], baseline_utilization: float = 0.0) -> float:
        rho = baseline_utilization + sum(x.utilization for x in loads)
        if rho >= 1:
            return math.inf
        wait = sum(x.second_moment for x in loads) / (2 * (1 - rho))
        return self.p99_zero_seconds + P99_PER_MEAN_WAIT * wait


def p99_without_queueing(config: ModelConfig) -> float | None:
    """The configuration's p99 with no queue in front of it, from its measured points; None
    when no point has a p99, a utilisation and a throughput."""
    readings = []
    for point in config.points:
        if point.latency_p99_seconds is None or UTIL not in point.peaks or not point.throughput_per_second:
            continue
        u = min(point.peak(UTIL), MOST_MEASURED_UTILIZATION)
        service = u / point.throughput_per_second
        readings.append(max(point.latency_p99_seconds - P99_PER_MEAN_WAIT * u * service / (2 * (1 - u)), 0.0))
    return max(readings, default=None)


def latency_copy(load: Load, config: ModelConfig, budget_seconds: float | None) -> LatencyCopy | None:
    """None when the copy has no budget or its configuration no reading to estimate from."""
    p99_zero = p99_without_queueing(config)
    if budget_seconds is None or budget_seconds <= 0 or p99_zero is None:
        return None
    return LatencyCopy(load, p99_zero, budget_seconds)


def latency_limits(copies: Sequence[LatencyCopy], everyone: Sequence[Load], devices: Sequence[Device],
                   baseline_utilization: float) -> tuple[ScopedLimit, ...]:
    """One scoped limit per budgeted copy: ``everyone`` is every copy the problem places,
    budgeted or not, since a neighbour's load counts either way. A copy whose budget its own p99
    without queueing already uses up counts more than any device holds: it is placed nowhere."""
    limits = []
    for copy in copies:
        if copy.room_seconds <= 0:
            weights = {x.name: 0.0 for x in everyone} | {copy.load.name: 2.0}
            limits.append(ScopedLimit(f"p99 budget of {copy.load.name}", UTIL, weights, {d.name: 1.0 for d in devices}))
            continue
        weights = {x.name: copy.weight(x) for x in everyone}
        lifted = sum(weights.values()) + 1.0  # more than any device's load: the limit binds only where the copy is
        weights[copy.load.name] += lifted
        limits.append(ScopedLimit(f"p99 budget of {copy.load.name}", UTIL, weights,
                                  {d.name: 1.0 + lifted for d in devices},
                                  {d.name: baseline_utilization for d in devices}))
    return tuple(limits)
