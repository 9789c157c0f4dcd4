"""Planning for demand: a configuration and a copy count per model, and a device per copy, chosen
together so that every model serves its traffic within its latency budget on the fewest devices.

Policies arrive already compiled into a :class:`PlacementProblem` (limits, pins, anti-affinity,
replica counts as the fewest copies, fleet size); this module only adds the choice of options.
Choices are made by pricing each option's volume against the fleet's bottleneck resources and
packed with the placement solver's heuristics; fleets small enough for the exact model then go to
the joint CP-SAT model, hinted with the best of those, and the final choice is packed by the
placement solver under every objective.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from gpupack.demand import ModelDemand
from gpupack import timing
from gpupack.domain import Placement, Resource
from gpupack.profiles import Profile
from gpupack.scheduler.packing.bounds import volume_bound
from gpupack.scheduler.demand.cpsat import Choice, solve_joint
from gpupack.scheduler.demand.latency import Load, latency_copy, latency_limits
from gpupack.scheduler.demand.options import CopyOption, options_for
from gpupack.scheduler.packing.heuristic import Assignment, best_heuristic
from gpupack.scheduler.packing.instance import Instance, compile_problem, device_totals
from gpupack.scheduler.packing.problem import (
    DeviceCountProof, InfeasibleError, Objective, PlacementProblem, PlacementResult, ProofStatus, ScopedLimit,
)
from gpupack.scheduler.packing.solver import solve
from gpupack.timing import Deadline
from gpupack.units import counted

# Above this many (option, device) decisions the joint model takes longer to build than it helps.
JOINT_MAX_PAIRS = 120_000
JOINT_SHARE = 0.6  # of the time left after the heuristics, when the joint model runs
JOINT_LEAST_SECONDS = 0.5  # with less left, the joint model cannot improve on the heuristics: skip it
# Building the joint model, per (option, device) pair: measured 50-85 us on a shared 2-core machine
# (100 models, 53,000 pairs: 2.6-4.5 s). With less time than building takes, it is skipped.
JOINT_BUILD_SECONDS_PER_PAIR = 6e-5
PRICE_ROUNDS = 3
SHARPER_PRICES = (2, 4)


@dataclass(frozen=True)
class ModelPlan:
    model: str
    config: str
    copies: int
    capacity_per_second: float  # all copies together, within the budget
    demand_per_second: float

    @property
    def headroom_ratio(self) -> float | None:
        """Capacity beyond demand, as a share of demand (None for a model without traffic)."""
        return self.capacity_per_second / self.demand_per_second - 1 if self.demand_per_second > 0 else None


@dataclass(frozen=True)
class DemandPlan:
    problem: PlacementProblem  # the chosen copies as models, under the base problem's limits
    result: PlacementResult  # the copies' placement; lower_bound, optimal and proof are the joint problem's
    models: tuple[ModelPlan, ...]
    rates: Mapping[str, float]  # model -> rate each of its copies serves
    configs: Mapping[str, str]  # model -> configuration name


def demand_by_model(profile: Profile, demands: Sequence[ModelDemand]) -> list[ModelDemand]:
    """Every profiled model's demand; a model the demand file leaves out is loaded once, idle."""
    given = {d.model: d for d in demands}
    return [given.get(m.model, ModelDemand(m.model, 0.0)) for m in profile.models]


def plan_for_demand(
    profile: Profile,
    demands: Sequence[ModelDemand],
    base: PlacementProblem,
    objectives: Sequence[Objective] = (Objective.MIN_DEVICES,),
    time_limit_seconds: float = 10.0,
    extra_copies: int = 0,
    latency_aware: bool = False,
) -> DemandPlan:
    """Raises :class:`InfeasibleError` naming the model and why when some demand cannot be served.
    ``latency_aware``: no device where a copy's p99, estimated at the device's utilisation, would
    exceed its budget (``scheduler/demand/latency.py``)."""
    started = timing.clock()
    deadline = Deadline.after(time_limit_seconds)
    objectives = tuple(dict.fromkeys(objectives)) or (Objective.MIN_DEVICES,)
    primary = objectives[0] if objectives[0] in (Objective.MIN_DEVICES, Objective.MIN_COST) else Objective.MIN_DEVICES
    per_model = demand_by_model(profile, demands)
    options, owner = _all_options(profile, per_model, base, extra_copies)
    budgets = {d.model: d.latency_p99_seconds for d in per_model} if latency_aware else {}
    instance = _option_instance(base, options, budgets)
    options, owner, instance = _usable(options, owner, instance, per_model)
    groups = _groups(base, per_model)
    forbidden = _forbidden(base, per_model)
    bound, source = _joint_bound(instance, owner, len(per_model), groups), "combinatorial"
    choice, assignment, packing_seconds = _priced_choice(instance, owner, len(per_model), groups, forbidden, primary,
                                                         deadline)
    method = "priced-choice"
    score: Callable[[Assignment], float] = _count if primary is Objective.MIN_DEVICES else functools.partial(_cost, instance)
    devices_used = _count(assignment)
    proven = False
    pairs = instance.n_models * devices_used
    if (devices_used > bound or primary is Objective.MIN_COST) and pairs <= JOINT_MAX_PAIRS \
            and deadline.remaining() * JOINT_SHARE >= max(JOINT_LEAST_SECONDS, pairs * JOINT_BUILD_SECONDS_PER_PAIR):
        remaining = deadline.remaining()
        hint: Choice = {m: (choice[m], assignment[m]) for m in range(len(per_model))}
        outcome = solve_joint(instance, owner, groups, primary, remaining * JOINT_SHARE, hint, forbidden)
        if outcome.choice is not None and score({m: ds for m, (_, ds) in outcome.choice.items()}) <= score(assignment):
            choice = [outcome.choice[m][0] for m in range(len(per_model))]
            assignment = {m: ds for m, (_, ds) in outcome.choice.items()}
            method, proven = "joint-cp-sat", outcome.proven
        if outcome.device_bound > bound:
            bound, source = outcome.device_bound, "cp-sat"
    chosen = [options[o] for o in choice]
    problem = dataclasses.replace(
        base, models=tuple(o.footprint for o in chosen), replicas={o.model: o.copies for o in chosen}, current=None,
        scoped_limits=base.scoped_limits + _latency_limits(base, [(o.model, o) for o in chosen], budgets),
    )
    placement = Placement({chosen[m].model: tuple(problem.devices[d].name for d in ds) for m, ds in assignment.items()})
    if deadline.remaining() < packing_seconds:  # the solver's first packing alone would end past the deadline
        result = PlacementResult(placement, device_totals(problem, placement), _count(assignment), bound, False, 0.0,
                                 method, None)
    else:
        result = solve(problem, objectives, deadline.remaining())
        by_name = {d.name: k for k, d in enumerate(problem.devices)}
        solved = {m: [by_name[n] for n in result.placement.assignments.get(o.model, ())] for m, o in enumerate(chosen)}
        if score(solved) > score(assignment):  # the joint model's placement was better than time allowed again
            result = dataclasses.replace(result, placement=placement, device_totals=device_totals(problem, placement),
                                         device_count=_count(assignment))
        elif score(solved) < score(assignment):
            method, proven = result.method, False
    if primary is Objective.MIN_DEVICES:
        optimal = result.device_count <= bound
    else:  # fewest devices need not be cheapest: only the joint model's proof counts
        optimal = proven
    # The last solve's proof is of one choice of configurations; the plan's is the joint problem's bound.
    proof = DeviceCountProof(ProofStatus.OPTIMAL if result.device_count <= bound else ProofStatus.GAP,
                             result.device_count, bound, source)
    result = dataclasses.replace(result, lower_bound=bound, optimal=optimal, method=method, proof=proof,
                                 solve_seconds=timing.clock() - started)
    return DemandPlan(
        problem=problem,
        result=result,
        models=tuple(_model_plan(o, d) for o, d in zip(chosen, per_model)),
        rates={o.model: o.rate_per_copy for o in chosen},
        configs={o.model: o.config.name for o in chosen},
    )


def _model_plan(option: CopyOption, demand: ModelDemand) -> ModelPlan:
    return ModelPlan(option.model, option.config.name, option.copies, option.copies * option.capacity_per_second,
                     demand.rate_per_second)


def _all_options(profile: Profile, demands: list[ModelDemand], base: PlacementProblem,
                 extra_copies: int) -> tuple[list[CopyOption], list[int]]:
    options: list[CopyOption] = []
    owner: list[int] = []
    for m, (model, demand) in enumerate(zip(profile.models, demands)):
        found, reason = options_for(demand, profile.configs_of(model), min_copies=base.replicas.get(model.model, 1),
                                     extra_copies=extra_copies)
        if reason:
            raise InfeasibleError(reason)
        options += found
        owner += [m] * len(found)
    return options, owner


def _option_instance(base: PlacementProblem, options: list[CopyOption],
                     budgets: Mapping[str, float | None]) -> Instance:
    """Every option as if it were a model of its own, named ``model#k``, with its model's pins
    (and, with ``budgets``, the latency limit of each option's copies)."""
    names = [f"{o.model}#{k}" for k, o in enumerate(options)]
    problem = dataclasses.replace(
        base,
        models=tuple(dataclasses.replace(o.footprint, model=n) for o, n in zip(options, names)),
        allowed_devices={n: base.allowed_devices[o.model] for o, n in zip(options, names) if o.model in base.allowed_devices},
        anti_affinity=(),
        forbidden_groups=(),  # of models, not options: _forbidden gives them by model index
        replicas={n: o.copies for o, n in zip(options, names)},
        current=None,
        scoped_limits=base.scoped_limits + _latency_limits(base, list(zip(names, options)), budgets),
    )
    return compile_problem(problem)


def _latency_limits(base: PlacementProblem, named: list[tuple[str, CopyOption]],
                    budgets: Mapping[str, float | None]) -> tuple[ScopedLimit, ...]:
    """The latency-aware capacity of each copy with a budget (none without ``budgets``)."""
    if not budgets:
        return ()
    loads = [Load(name, o.footprint.peak(Resource.GPU_UTILIZATION), o.rate_per_copy) for name, o in named]
    copies = [c for c in (latency_copy(load, o.config, budgets.get(o.model))
                          for (_, o), load in zip(named, loads)) if c is not None]
    return latency_limits(copies, loads, base.devices, base.server_baseline.get(Resource.GPU_UTILIZATION, 0.0))


def _usable(options: list[CopyOption], owner: list[int], instance: Instance,
            demands: list[ModelDemand]) -> tuple[list[CopyOption], list[int], Instance]:
    """Only options whose copies each fit on a distinct device the model may use."""
    keep = instance.allowed.sum(axis=1) >= instance.replicas
    kept = np.zeros(len(demands), dtype=bool)
    np.logical_or.at(kept, np.array(owner, dtype=np.int64), keep)
    for m in np.flatnonzero(~kept):
        first = owner.index(int(m))
        raise InfeasibleError(_why_unplaceable(options[first], instance, first, demands[m]))
    index = np.flatnonzero(keep)
    sliced = dataclasses.replace(instance, demand=instance.demand[index], allowed=instance.allowed[index],
                                 replicas=instance.replicas[index], groups=(), forbidden=())
    return [options[o] for o in index], [owner[o] for o in index], sliced


def _why_unplaceable(option: CopyOption, instance: Instance, o: int, demand: ModelDemand) -> str:
    fits = int(instance.allowed[o].sum())
    served = f"{demand.rate_per_second:g}/s" + (f" within p99 {demand.latency_p99_seconds * 1000:g} ms"
                                                if demand.latency_p99_seconds else "")
    if fits == 0:
        return (f"model {option.model}: no device may hold one copy of configuration {option.config.name!r} "
                f"(memory, utilisation at {option.rate_per_copy:g}/s, or pins exceed every device's limits)")
    return (f"model {option.model}: serving {served} needs {counted(option.copies, 'copy')} of configuration "
            f"{option.config.name!r} ({option.capacity_per_second:g}/s each) on distinct devices, "
            f"but only {counted(fits, 'device')} may hold one")


def _groups(base: PlacementProblem, demands: list[ModelDemand]) -> list[list[int]]:
    index = {d.model: m for m, d in enumerate(demands)}
    return [sorted(index[n] for n in group if n in index) for group in base.anti_affinity]


def _forbidden(base: PlacementProblem, demands: list[ModelDemand]) -> list[list[int]]:
    """Forbidden groups as model indices, those whose every model is planned."""
    index = {d.model: m for m, d in enumerate(demands)}
    return [sorted(index[n] for n in group) for group in base.forbidden_groups if all(n in index for n in group)]


def _volumes(instance: Instance) -> np.ndarray:
    """[option, resource]: all copies' demand as a share of the largest device's room."""
    room = np.where(instance.bounded.any(axis=0), instance.capacity.max(axis=0), 0).astype(float)
    shares = instance.demand * instance.replicas[:, None] / np.where(room > 0, room, 1.0)
    return np.where(room > 0, shares, 0.0)


def _joint_bound(instance: Instance, owner: list[int], n_models: int, groups: list[list[int]]) -> int:
    """Devices no plan can do without: the least volume each model can take, per resource, and
    the most copies or anti-affine models that need devices of their own."""
    owner_array = np.array(owner)
    usable = np.all(instance.capacity >= 0, axis=1)
    bound = max([len(g) for g in groups] + [1 if n_models else 0])
    for m in range(n_models):
        bound = max(bound, int(instance.replicas[owner_array == m].min()))
    for r in range(len(instance.resources)):
        if not instance.bounded[:, r].any():
            continue
        least = np.full(n_models, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(least, owner_array, instance.demand[:, r] * instance.replicas)
        bound = max(bound, volume_bound(least, instance.capacity[usable, r]))
    return bound


def _priced_choice(instance: Instance, owner: list[int], n_models: int, groups: list[list[int]],
                   forbidden: list[list[int]], primary: Objective,
                   deadline: Deadline) -> tuple[list[int], Assignment, float]:
    """The best packing among option choices priced by different views of the bottleneck, and the
    seconds the longest packing took; when another would end past the deadline, the best complete
    one so far (a plan is always answered in time)."""
    volumes = _volumes(instance)
    owner_array = np.array(owner)
    prices = [np.ones(volumes.shape[1])]
    price = _least_totals(volumes, owner_array, n_models)
    # Sharper prices lean harder on the bottleneck; which packs best differs from fleet to fleet.
    prices += [(price / max(price.max(), 1e-12)) ** k for k in SHARPER_PRICES]
    for _ in range(PRICE_ROUNDS):
        prices.append(price / max(price.max(), 1e-12))
        price = volumes[_choose(volumes @ prices[-1], owner_array, n_models)].sum(axis=0)
    candidates = [_choose(volumes @ p, owner_array, n_models) for p in prices]
    candidates.append(_choose(volumes.max(axis=1), owner_array, n_models))
    best: tuple[float, list[int], Assignment] | None = None
    packing_seconds = 0.0
    for choice in candidates:
        if best is not None and deadline.remaining() < packing_seconds:  # another packing would end past it
            break
        started = timing.clock()
        assignment = best_heuristic(_chosen_instance(instance, choice, groups, forbidden), deadline=deadline)
        packing_seconds = max(packing_seconds, timing.clock() - started)
        if assignment is None:
            continue
        score = _count(assignment) if primary is Objective.MIN_DEVICES else _cost(instance, assignment)
        if best is None or score < best[0]:
            best = (score, choice, assignment)
    if best is None:
        raise InfeasibleError(f"no packing of the copies of {counted(n_models, 'model')} found that satisfies all constraints")
    return best[1], best[2], packing_seconds


def _least_totals(volumes: np.ndarray, owner: np.ndarray, n_models: int) -> np.ndarray:
    least = np.full((n_models, volumes.shape[1]), np.inf)
    np.minimum.at(least, owner, volumes)
    return least.sum(axis=0)


def _choose(scores: np.ndarray, owner: np.ndarray, n_models: int) -> list[int]:
    order = np.lexsort((scores, owner))
    first = np.ones(len(order), dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    picked = order[first]
    assert len(picked) == n_models
    return [int(o) for o in picked]


def _chosen_instance(instance: Instance, choice: list[int], groups: list[list[int]],
                     forbidden: list[list[int]]) -> Instance:
    """The options chosen, one per model, in model order: a plain placement instance."""
    return dataclasses.replace(instance, demand=instance.demand[choice], allowed=instance.allowed[choice],
                               replicas=instance.replicas[choice],
                               groups=tuple(np.array(g) for g in groups if len(g) > 1),
                               forbidden=tuple(np.array(g) for g in forbidden))


def _count(assignment: Assignment) -> int:
    return len({d for ds in assignment.values() for d in ds})


def _cost(instance: Instance, assignment: Assignment) -> float:
    return float(sum(instance.cost[d] for d in {d for ds in assignment.values() for d in ds}))
