"""The two plans a demand plan is measured against, solved in the same run by the same solver.

1. ``peak-one-copy``: every model at its profiled peak, one copy each (``gpupack plan`` without
   demand): what a fleet sized for "every model always saturated" needs.
2. ``best-throughput-config``: the Model Analyzer way. Each model takes the configuration with the
   highest throughput within its budget and as many copies as its demand needs, each copy
   counted at that configuration's peak (as if saturated), then packed.
The joint plan differs from (2) in choosing configurations and copy counts for the fleet, and in
counting each copy at the rate it actually serves.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

from gpupack.demand import ModelDemand
from gpupack.profiles import Profile
from gpupack.scheduler.demand.plan import demand_by_model
from gpupack.scheduler.demand.cost import capacity_per_second, copy_footprint
from gpupack.scheduler.packing.problem import InfeasibleError, Objective, PlacementProblem, PlacementResult
from gpupack.scheduler.packing.solver import solve

PEAK_ONE_COPY = "peak-one-copy"
BEST_THROUGHPUT = "best-throughput-config"
JOINT = "joint"
TITLES = {
    PEAK_ONE_COPY: "1. every model at its profiled peak, one copy",
    BEST_THROUGHPUT: "2. best-throughput config, copies for demand (Model Analyzer way)",
    JOINT: "3. joint: config and copies chosen for demand",
}


@dataclass(frozen=True)
class BaselineOutcome:
    name: str
    result: PlacementResult | None
    infeasible_reason: str | None = None


def peak_one_copy(profile: Profile, base: PlacementProblem, objective: Objective, time_limit_seconds: float) -> BaselineOutcome:
    return _solved(PEAK_ONE_COPY, dataclasses.replace(base, models=profile.models, current=None), objective,
                   time_limit_seconds)


def best_throughput_config(profile: Profile, demands: Sequence[ModelDemand], base: PlacementProblem,
                           objective: Objective, time_limit_seconds: float) -> BaselineOutcome:
    models, replicas = [], {}
    for model, demand in zip(profile.models, demand_by_model(profile, demands)):
        configs = [(capacity_per_second(c, demand.latency_p99_seconds), -c.peak_gpu_memory_bytes, k, c)
                   for k, c in enumerate(profile.configs_of(model))]
        capacity, _, _, config = max(configs, key=lambda t: t[:3])
        if capacity <= 0:
            return BaselineOutcome(BEST_THROUGHPUT, None, f"model {model.model}: no configuration meets its budget")
        models.append(copy_footprint(model.model, config, capacity))
        replicas[model.model] = max(base.replicas.get(model.model, 1), math.ceil(demand.rate_per_second / capacity - 1e-9))
    problem = dataclasses.replace(base, models=tuple(models), replicas=replicas, current=None)
    return _solved(BEST_THROUGHPUT, problem, objective, time_limit_seconds)


def _solved(name: str, problem: PlacementProblem, objective: Objective, time_limit_seconds: float) -> BaselineOutcome:
    try:
        return BaselineOutcome(name, solve(problem, (objective,), time_limit_seconds))
    except InfeasibleError as e:
        return BaselineOutcome(name, None, str(e))
