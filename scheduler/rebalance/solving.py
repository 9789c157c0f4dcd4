"""The target placement a rebalance moves towards, and what to do when no placement satisfies
every ``rebalance`` policy.

The rule, the same one ``alert`` policies already follow (:mod:`gpupack.scheduler.planning`):
when the hard policies together have no solution, they are taken in file order, each kept only
if a placement still exists with it and the ones kept before it; the others are reported as
unsatisfiable and the plan is made under the rest. So a pin to servers that do not exist, or
replicas beyond the fleet, cannot block the moves every other policy asks for, and the policy
that cannot be met is named (earlier policies win: an operator orders a file by importance, and
the answer does not depend on solver timing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.rules.compiled import Constraints
from gpupack.scheduler.constraints import problem_from
from gpupack.scheduler.packing.problem import DeviceCountProof, InfeasibleError, Objective
from gpupack.scheduler.planning import plan_under
from gpupack.scheduler.rebalance.configurations import plan_configurations
from gpupack.scheduler.rebalance.current import FleetView
from gpupack.scheduler.rebalance.inputs import FleetInputs
from gpupack.scheduler.rebalance.moves import MovePlan, plan_moves
from gpupack.scheduler.rebalance.steps import Budget


@dataclass(frozen=True)
class Solved:
    target: Placement
    moves: MovePlan
    budget: Budget
    broken_alerts: tuple[str, ...] = ()
    proof: DeviceCountProof | None = None
    unsatisfiable: tuple[str, ...] = ()  # rebalance policies no placement meets; planned without them


@dataclass(frozen=True)
class Fleet:
    """What one plan places: the models, the devices that answer, the baseline, today's placement."""

    inputs: FleetInputs
    view: FleetView
    models: tuple[ModelFootprint, ...]
    devices: tuple[Device, ...]
    baseline: Mapping[Resource, float]


def target_for(fleet: Fleet, constraints: Constraints, violated: bool, objectives: Sequence[Objective],
               limit_seconds: float) -> Solved:
    try:
        return _solve(fleet, constraints, violated, objectives, limit_seconds)
    except InfeasibleError:
        if not violated:
            raise
    kept: list[str] = []
    dropped: list[str] = []
    hard = constraints.hard()
    for name in hard.policies:
        try:
            plan_under(hard.only([*kept, name]), fleet.models, fleet.devices, fleet.baseline, objectives[:1],
                       limit_seconds, current=fleet.view.placement, soft_alerts=False)
            kept.append(name)
        except InfeasibleError:
            dropped.append(name)
    if not dropped:  # the devices alone cannot hold the models: nothing to drop
        raise InfeasibleError("the models do not fit the devices that answer, whatever the policies")
    solved = _solve(fleet, constraints.only(n for n in constraints.policies if n not in dropped), violated,
                    objectives, limit_seconds)
    return Solved(solved.target, solved.moves, solved.budget, solved.broken_alerts, solved.proof, tuple(dropped))


def _solve(fleet: Fleet, constraints: Constraints, violated: bool, objectives: Sequence[Objective],
           limit_seconds: float) -> Solved:
    current = fleet.view.placement
    problem = problem_from(constraints, fleet.models, fleet.devices, fleet.baseline, current=current)
    if not violated:
        return Solved(current, MovePlan((), True, reason="no policy is violated"), Budget.from_problem(problem))
    reconfigured = plan_configurations(fleet.inputs, fleet.view, constraints, objectives, limit_seconds)
    if reconfigured is not None:
        return Solved(reconfigured.placement,
                      plan_moves(current, reconfigured.placement, reconfigured.budget, reconfigured.configs),
                      reconfigured.budget)
    planned = plan_under(constraints, fleet.models, fleet.devices, fleet.baseline, objectives, limit_seconds,
                         current=current)
    budget = Budget.from_problem(planned.problem)
    return Solved(planned.result.placement, plan_moves(current, planned.result.placement, budget), budget,
                  planned.broken_alerts, planned.result.proof)
