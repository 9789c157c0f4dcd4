"""Each model's ways to serve its demand: a configuration and a copy count, and what one copy costs.

The copies of a model split its demand evenly and sit on distinct devices. Fewer copies than the
demand needs are never an option; by default exactly that many are planned, and ``extra_copies``
more may be offered too, since smaller copies pack where one big one does not (at the price of
memory, and on the load-proportional assumption). Options no better than another of the same model in every resource,
with no fewer copies, are dropped before any solver sees them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpupack.demand import ModelDemand
from gpupack.domain import ModelFootprint, Resource
from gpupack.model_configs import ModelConfig
from gpupack.scheduler.demand.cost import capacity_per_second, copy_footprint

@dataclass(frozen=True)
class CopyOption:
    model: str
    config: ModelConfig
    copies: int
    capacity_per_second: float  # of one copy, within the latency budget
    footprint: ModelFootprint  # one copy serving its share of the demand

    @property
    def rate_per_copy(self) -> float:
        return self.footprint.throughput_per_second or 0.0


def options_for(demand: ModelDemand, configs: tuple[ModelConfig, ...], min_copies: int = 1,
                extra_copies: int = 0) -> tuple[list[CopyOption], str | None]:
    """The model's options, or none and why no configuration serves its demand."""
    options: list[CopyOption] = []
    for config in configs:
        capacity = capacity_per_second(config, demand.latency_p99_seconds)
        if capacity <= 0 and demand.rate_per_second > 0:
            continue
        fewest = max(min_copies, 1, math.ceil(demand.rate_per_second / capacity - 1e-9) if capacity > 0 else 1)
        for copies in range(fewest, fewest + extra_copies + 1):
            rate = demand.rate_per_second / copies
            options.append(CopyOption(demand.model, config, copies, capacity, copy_footprint(demand.model, config, rate)))
    if not options:
        return [], _why_none(demand, configs)
    return _undominated(options), None


def _undominated(options: list[CopyOption]) -> list[CopyOption]:
    kept: list[CopyOption] = []
    for option in sorted(options, key=lambda o: (o.copies, sum(o.footprint.peaks.values()))):
        if not any(_dominates(k, option) for k in kept):
            kept.append(option)
    return kept


def _dominates(a: CopyOption, b: CopyOption) -> bool:
    return a.copies <= b.copies and all(a.footprint.peak(r) <= b.footprint.peak(r) for r in Resource)


def _why_none(demand: ModelDemand, configs: tuple[ModelConfig, ...]) -> str:
    budget = demand.latency_p99_seconds
    measured = [p for c in configs for p in c.points if p.throughput_per_second]
    if not measured:
        return f"model {demand.model}: the profile has no measured throughput for it, so no copy count can be sized"
    timed = [p.latency_p99_seconds for c in configs for p in c.points if p.latency_p99_seconds is not None]
    if not timed:
        return (f"model {demand.model}: no measured p99 latency to hold against its budget of "
                f"{_ms(budget or 0)} (profile it with latencies, or drop the budget)")
    return (f"model {demand.model}: no configuration answers within its p99 budget of "
            f"{_ms(budget or 0)}; the fastest measured point takes {_ms(min(timed))}")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"
