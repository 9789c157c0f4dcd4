"""A rebalance toward a placement wished from outside (a step of a schedule the closed loop
follows), planned from the placement live now rather than from the wish's previous step.

The wish names devices of its own (a plan's ``gpu-1``...): each is mapped onto a live device that
answers, the one holding most of its models first, so that the fewest copies move. Models the wish
does not name stay where they are. The wished placement is then judged with the live demand by the
``rebalance`` policies, with the evaluator the rules engine uses: when it breaks one (demand above
the forecast, a pin), the solver places again under every policy with the wish as the placement to
change least; when no placement meets them, nothing is planned and the policies' own rebalance
guards. The moves are the move planner's, make-before-break, each copy in its wished configuration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

from gpupack.domain import Placement
from gpupack.model_configs import DEFAULT_CONFIG_NAME, ModelConfig
from gpupack.rules.compiled import Throughput
from gpupack.rules.evaluator import evaluate
from gpupack.rules.policy import Action, PolicySet
from gpupack.scheduler.constraints import problem_from
from gpupack.scheduler.demand.cost import capacity_per_second, copy_peaks
from gpupack.scheduler.packing.problem import InfeasibleError, Objective
from gpupack.scheduler.planning import plan_under
from gpupack.scheduler.rebalance.admission import admit
from gpupack.scheduler.rebalance.configurations import configured_budget, required_rates
from gpupack.scheduler.rebalance.current import FleetView, LoadedModel
from gpupack.scheduler.rebalance.inputs import FleetInputs
from gpupack.scheduler.rebalance.moves import plan_moves
from gpupack.scheduler.rebalance.outcome import RebalancePlan
from gpupack.scheduler.rebalance.steps import Budget
from gpupack.units import counted


@dataclass(frozen=True)
class Wish:
    devices: Mapping[str, frozenset[str]]  # the wish's own device name -> the models on it
    configs: Mapping[str, str] = dataclasses.field(default_factory=dict)  # model -> profiled configuration
    rates_per_second: Mapping[str, float] = dataclasses.field(default_factory=dict)  # model -> one copy's rate


@dataclass(frozen=True)
class TowardPlan:
    plan: RebalancePlan | None  # None: nothing to carry out, ``reason`` says why
    replanned_because: tuple[str, ...] = ()  # rebalance policies the wish breaks under live demand
    reason: str = ""


def map_devices(wanted: Mapping[str, frozenset[str]], live: Mapping[str, frozenset[str]]) -> dict[str, str] | None:
    """Each wanted device that holds a copy -> a distinct live device, the pairs sharing most models
    first (greedy: a move saved is a load and an unload saved), a same-named device on a tie; None
    when fewer live devices answer than the wish needs."""
    busy = {name: models for name, models in wanted.items() if models}
    if len(busy) > len(live):
        return None
    pairs = sorted(((len(models & live[d]), w == d, w, d) for w, models in busy.items() for d in live),
                   key=lambda p: (-p[0], not p[1], p[2], p[3]))
    mapped: dict[str, str] = {}
    taken: set[str] = set()
    for _, _, w, d in pairs:
        if w not in mapped and d not in taken:
            mapped[w] = d
            taken.add(d)
    return mapped


def plan_toward(inputs: FleetInputs, fleet: FleetView, policies: PolicySet, wish: Wish, max_moves: int | None,
                cooling_seconds: Mapping[str, float], objectives: Sequence[Objective],
                time_limit_seconds: float) -> TowardPlan:
    """``inputs``: the devices that answer, with the live demand; ``fleet``: the placement now."""
    live = {d.device.name: frozenset(fleet.placement.models_on(d.device.name)) for d in inputs.devices}
    mapped = map_devices(wish.devices, live)
    if mapped is None:
        needed = sum(1 for models in wish.devices.values() if models)
        return TowardPlan(None, reason=f"the step needs {counted(needed, 'device')}; "
                                       f"{counted(len(live), 'device')} of managed servers answer")
    current = fleet.placement
    wished = {m: tuple(sorted(mapped[w] for w, models in wish.devices.items() if m in models))
              for m in sorted({m for models in wish.devices.values() for m in models})}
    target = Placement({**current.assignments, **wished})
    wished_inputs = _in_wished_configs(inputs, wish)
    trial = _view(target, inputs, fleet)
    evaluation = evaluate(wished_inputs.snapshot(trial), policies, target)
    broken = tuple(sorted({v.policy for v in evaluation.violations
                           if evaluation.policies[v.policy].action is Action.REBALANCE}))
    constraints = wished_inputs.constraints(trial, policies)
    models, devices = wished_inputs.models(trial), tuple(d.device for d in inputs.devices)
    if broken:
        try:
            planned = plan_under(constraints, models, devices, inputs.server_baseline(), objectives,
                                 time_limit_seconds, current=target)
        except InfeasibleError as e:
            return TowardPlan(None, broken, f"no placement meets the policies under live demand: {e}")
        target, problem = planned.result.placement, planned.problem
    else:
        problem = problem_from(constraints, models, devices, inputs.server_baseline(), current=target)
    budget = Budget.from_problem(problem)
    if inputs.profile is not None and inputs.profile.configs:
        # Every profiled configuration at the wished rate: a copy switching counts both while it switches.
        budget = configured_budget(budget, inputs, fleet,
                                   {m: {c.name: c for c in cs} for m, cs in inputs.profile.configs.items()},
                                   wish.rates_per_second, required_rates(constraints.of_type(Throughput)))
    configs = {m: c for m, c in wish.configs.items() if c != DEFAULT_CONFIG_NAME and _searched(inputs, m, c) is not None}
    moves = plan_moves(current, target, budget, configs)
    violations = evaluate(inputs.snapshot(fleet), policies, current).violations
    return TowardPlan(RebalancePlan(fleet, inputs, violations, target, moves,
                                    admit(current, moves.steps, budget, max_moves, cooling_seconds)), broken)


def _view(placement: Placement, inputs: FleetInputs, fleet: FleetView) -> FleetView:
    """The fleet as it would be with ``placement``: each copy on its device's first server."""
    server_of = {d.device.name: d.servers[0] for d in inputs.devices if d.servers}
    models = tuple(LoadedModel(server_of.get(d, ""), m, "", d) for m, d in sorted(placement.pairs()))
    return FleetView(models, fleet.generated_at_seconds, fleet.down)


def _searched(inputs: FleetInputs, model: str, name: str) -> ModelConfig | None:
    configs = inputs.profile.configs.get(model, ()) if inputs.profile is not None else ()
    return next((c for c in configs if c.name == name), None)


def _in_wished_configs(inputs: FleetInputs, wish: Wish) -> FleetInputs:
    """The inputs with each wished copy costing and serving what its configuration does at its
    rate, so the judgement and the solver see the copies the wish would load."""
    footprints, capacities = dict(inputs.footprints), dict(inputs.copy_capacity_per_second)
    for model, name in wish.configs.items():
        config = _searched(inputs, model, name)
        if config is not None:
            footprints[model] = copy_peaks(config, wish.rates_per_second.get(model, 0.0))
            capacities[model] = capacity_per_second(config, None)
    return dataclasses.replace(inputs, footprints=footprints, copy_capacity_per_second=capacities)
