"""What ``action`` means for planning: ``rebalance`` policies hold in every plan; ``alert`` ones
are kept where they can be and never block a plan.

With alert policies soft, the planner first asks for every policy; when that has no solution it
keeps the rebalance policies and adds the alert policies back one at a time, in file order,
each only if a plan still exists with it. The alert policies the final plan breaks are named,
judged by the rules evaluator on the same compiled constraints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Collection, Iterable, Mapping, Sequence

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.rules.compiled import Constraints
from gpupack.rules.evaluator import Status, judge
from gpupack.rules.peaks import DevicePeaks, ModelPeaks, PeaksSnapshot
from gpupack.scheduler.constraints import ALL_RESOURCES, problem_from
from gpupack.scheduler.packing.problem import InfeasibleError, Objective, PlacementProblem, PlacementResult
from gpupack.scheduler.packing.solver import solve


@dataclass(frozen=True)
class PolicyPlan:
    problem: PlacementProblem  # what was solved: the constraints that were kept
    result: PlacementResult
    kept: tuple[str, ...]  # the policies the placement was made under
    broken_alerts: tuple[str, ...] = ()  # alert policies the placement still breaks


def plan_under(
    constraints: Constraints,
    models: Iterable[ModelFootprint],
    devices: Iterable[Device],
    server_baseline: Mapping[Resource, float],
    objectives: Sequence[Objective],
    time_limit_seconds: float,
    current: Placement | None = None,
    soft_alerts: bool = True,
    limited: Collection[Resource] = ALL_RESOURCES,
    forbidden_groups: tuple[frozenset[str], ...] = (),
) -> PolicyPlan:
    """The best placement under every policy, or, with ``soft_alerts``, under the rebalance
    policies and as many alert policies as can be kept; ``limited``: the resources held to each
    device's capacity; ``forbidden_groups``: models measured to break a budget together, never all
    on one device whatever the policies kept. Raises :class:`InfeasibleError` when the hard ones
    alone have no solution."""
    models, devices = tuple(models), tuple(devices)

    def attempt(kept: Constraints) -> PolicyPlan:
        problem = replace(problem_from(kept, models, devices, server_baseline, current, limited),
                          forbidden_groups=forbidden_groups)
        return PolicyPlan(problem, solve(problem, objectives, time_limit_seconds), kept.policies)

    try:
        return attempt(constraints)
    except InfeasibleError:
        alerts = [name for name in constraints.policies if name not in constraints.hard().policies]
        if not soft_alerts or not alerts:
            raise
    kept = list(constraints.hard().policies)
    best = attempt(constraints.only(kept))
    for name in alerts:
        try:
            best = attempt(constraints.only([*kept, name]))
        except InfeasibleError:
            continue
        kept.append(name)
    broken = broken_policies(constraints, models, best.result.placement)
    return PolicyPlan(best.problem, best.result, best.kept, tuple(n for n in alerts if n in broken))


def broken_policies(constraints: Constraints, models: Iterable[ModelFootprint], placement: Placement) -> set[str]:
    """The policies the evaluator judges violated by ``placement``, on the compiled fleet."""
    snapshot = PeaksSnapshot(
        tuple(DevicePeaks(d.device, d.servers, d.baseline) for d in constraints.fleet.devices),
        tuple(ModelPeaks(m.model, "", m.peaks, loaded=False) for m in models))
    return {r.policy for r in judge(snapshot, constraints, placement) if r.status is Status.VIOLATED}
