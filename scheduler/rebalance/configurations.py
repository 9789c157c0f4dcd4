"""A rebalance that may change models' configurations: the demand planner inside the rebalancer.

When a throughput policy weighs models whose profile lists searched ``configs``, the rebalancer
asks :func:`plan_for_demand` for each model's configuration and copy count (serving what the
policy requires), then places those copies with the fewest moves from today, on no more devices
than the demand plan needs. The budget the moves are ordered under knows every configuration's
peaks and capacity, so a copy switching configuration counts both while it switches and no step
leaves a model serving less than it must.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from gpupack.demand import ModelDemand
from gpupack.domain import Placement, Resource
from gpupack.model_configs import DEFAULT_CONFIG_NAME, ModelConfig
from gpupack.profiles import Profile
from gpupack.rules.compiled import Constraints, Throughput
from gpupack.rules.demand_source import copy_capacities
from gpupack.scheduler.constraints import problem_from
from gpupack.scheduler.rebalance.current import FleetView
from gpupack.scheduler.demand.plan import plan_for_demand
from gpupack.scheduler.demand.cost import capacity_per_second, copy_footprint, copy_peaks
from gpupack.scheduler.rebalance.inputs import FleetInputs
from gpupack.scheduler.rebalance.steps import Budget
from gpupack.scheduler.packing.problem import Dimension, Objective, PlacementProblem
from gpupack.scheduler.packing.solver import solve


@dataclass(frozen=True)
class ConfigPlan:
    problem: PlacementProblem  # the chosen configurations' copies, placed from today
    placement: Placement
    configs: Mapping[str, str]  # model -> the configuration its copies run (models with searched configs)
    budget: Budget


def plan_configurations(
    inputs: FleetInputs,
    fleet: FleetView,
    constraints: Constraints,
    objectives: Sequence[Objective],
    time_limit_seconds: float,
) -> ConfigPlan | None:
    """None unless a throughput policy weighs a loaded model the profile searched configurations for."""
    profile = inputs.profile
    required = required_rates(constraints.of_type(Throughput))
    loaded = set(fleet.placement.assignments)
    if profile is None or not set(required) & set(profile.configs) & loaded:
        return None
    models, devices = inputs.models(fleet), [d.device for d in inputs.devices]
    # The demand planner sizes copy counts itself; the throughput policies' own count is one
    # configuration's, so only their pins are kept.
    others = Constraints(constraints.fleet, tuple(c for c in constraints.items if not isinstance(c, Throughput)))
    base = dataclasses.replace(
        problem_from(constraints, models, devices, inputs.server_baseline(), current=fleet.placement),
        replicas=problem_from(others, models, devices, inputs.server_baseline()).replicas)
    planned, base = _unknown_demand_kept(inputs, fleet, base, set(required))
    demands = [ModelDemand(m.model, required.get(m.model, 0.0)) for m in planned.models]
    demand = plan_for_demand(planned, demands, base, (Objective.MIN_DEVICES,), time_limit_seconds / 2)
    configs = {m.model: {c.name: c for c in planned.configs_of(m)} for m in planned.models}
    chosen = {model: configs[model][name] for model, name in demand.configs.items()}
    most = demand.result.device_count if base.max_devices is None else min(base.max_devices, demand.result.device_count)
    problem = dataclasses.replace(
        base,
        models=tuple(copy_footprint(m, c, demand.rates[m]) for m, c in chosen.items()),
        replicas={**base.replicas, **{m.model: m.copies for m in demand.models}},
        max_devices=most,
    )
    result = solve(problem, objectives, time_limit_seconds / 2)
    budget = configured_budget(Budget.from_problem(problem), inputs, fleet, configs, demand.rates, required)
    # A model planned in the profile's default (none searched, or none matching today) loads as the repository has it.
    searched = {m: name for m, name in demand.configs.items() if m in profile.configs and name != DEFAULT_CONFIG_NAME}
    return ConfigPlan(problem, result.placement, searched, budget)


def _unknown_demand_kept(
    inputs: FleetInputs, fleet: FleetView, base: PlacementProblem, known: set[str]
) -> tuple[Profile, PlacementProblem]:
    """The loaded models' profile, where a model without known demand keeps its configuration
    and copy count (only its devices may change): no demand read is not "no demand"."""
    assert inputs.profile is not None
    loaded = fleet.placement.assignments
    configs, replicas = dict(inputs.profile.configs), dict(base.replicas)
    running = inputs.loaded_configs(fleet)
    for model in sorted(set(loaded) - known):
        names = {name for (m, _), name in running.items() if m == model}
        today = [c for c in configs.get(model, ()) if c.name in names]
        if today:
            configs[model] = (today[0],)
        else:
            configs.pop(model, None)
        replicas[model] = max(replicas.get(model, 1), len(loaded[model]))
    profile = dataclasses.replace(inputs.profile, models=tuple(m for m in inputs.profile.models if m.model in loaded),
                                  configs=configs)
    return profile, dataclasses.replace(base, replicas=replicas)


def required_rates(throughput: Iterable[Throughput]) -> dict[str, float]:
    """Per model, the highest rate any throughput policy requires of it."""
    required: dict[str, float] = {}
    for c in throughput:
        for model, rate in c.required_per_second.items():
            required[model] = max(rate, required.get(model, 0.0))
    return required


def configured_budget(
    budget: Budget,
    inputs: FleetInputs,
    fleet: FleetView,
    configs: Mapping[str, Mapping[str, ModelConfig]],
    rates: Mapping[str, float],
    required: Mapping[str, float],
) -> Budget:
    """``budget`` with what each configuration of ``configs`` costs at the model's rate and serves,
    so a copy switching configuration counts both while it switches and no step leaves a model
    serving less than ``required``. A copy in a configuration the profile does not list costs and
    serves what the model's top-level entry says."""
    assert inputs.profile is not None
    default_capacity = copy_capacities(inputs.profile)
    peaks: dict[str, dict[str, Mapping[Dimension, float]]] = {}
    capacities: dict[str, dict[str, float]] = {}
    for model in inputs.profile.configs:
        if model not in configs:
            continue
        rate = rates.get(model, 0.0)
        peaks[model] = {name: _dimensions(copy_peaks(c, rate)) for name, c in configs[model].items()}
        peaks[model][DEFAULT_CONFIG_NAME] = _dimensions(inputs.footprints.get(model, {}))
        capacities[model] = {name: capacity_per_second(c, None) for name, c in configs[model].items()}
        capacities[model][DEFAULT_CONFIG_NAME] = default_capacity.get(model, 0.0)
    return dataclasses.replace(
        budget,
        config_peaks=peaks,
        loaded_configs=inputs.loaded_configs(fleet),
        config_capacity_per_second=capacities,
        required_per_second={m: r for m, r in required.items() if m in capacities},
    )


def _dimensions(peaks: Mapping[Resource, float]) -> dict[Dimension, float]:
    return {resource: value for resource, value in peaks.items()}
