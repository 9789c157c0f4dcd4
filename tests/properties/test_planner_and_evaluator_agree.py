"""The planner and the evaluator read the same policies the same way, on random fleets.

1. Every plan the planner returns is judged violation-free by the evaluator, every device also
   judged at most 100% busy: the planner holds it there without a policy saying so.
2. On fleets small enough to enumerate, the planner's device count is the brute-force minimum
   under the evaluator's own judgement: the planner is not over-restrictive.
"""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import HealthCheck, given, settings

from gpupack.domain import Placement
from gpupack.rules.compiled import Replicas, compile_policies
from gpupack.rules.evaluator import Status, evaluate, fleet_of
from gpupack.rules.policy import CapacityPolicy, PolicySet
from gpupack.scheduler.constraints import build_problem
from gpupack.scheduler.packing.problem import InfeasibleError, PlacementResult
from gpupack.scheduler.packing.solver import solve

from tests.properties.fleets import UTIL, Case, cases

# Modest counts: the suite runs on 2 shared cores.
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def at_most_full(case: Case) -> Case:
    """The case with the device's utilisation judged too (the cases judge its memory already): the
    planner holds every device to 100% of each resource without being told, so the judge must."""
    physical = CapacityPolicy(name="utilization", resource=UTIL, max_ratio=1.0)
    return dataclasses.replace(case, policies=PolicySet((*case.policies.policies, physical)))


def plan(case: Case) -> PlacementResult | None:
    problem = build_problem(case.models, [d.device for d in case.devices], {}, case.policies,
                            servers=case.servers, device_baselines=case.baselines)
    try:
        return solve(problem, time_limit_seconds=5.0)
    except InfeasibleError:
        return None


def violated(case: Case, placement: Placement) -> list[str]:
    evaluation = evaluate(case.snapshot(), case.policies, placement)
    return sorted({f"{r.policy}@{r.device or r.model}" for r in evaluation.results if r.status is Status.VIOLATED})


@PROPERTY_SETTINGS
@given(cases())
def test_every_plan_is_judged_violation_free(case: Case) -> None:
    result = plan(case)
    if result is not None:
        assert violated(at_most_full(case), result.placement) == []


def brute_force_minimum(case: Case) -> int | None:
    """Fewest devices over every placement the evaluator accepts. Each model gets exactly the
    replicas it needs: another copy only adds load, pairs and devices, so it never helps."""
    names = [d.device.name for d in case.devices]
    empty = Placement({})
    compiled = compile_policies(case.policies, fleet_of(case.snapshot(), empty))
    needed = {m.model: 1 for m in case.models}
    for constraint in compiled.of_type(Replicas):
        for model in constraint.models:
            needed[model] = max(needed[model], constraint.count)
    choices = [list(itertools.combinations(names, needed[m.model])) for m in case.models]
    best = None
    for combination in itertools.product(*choices):
        placement = Placement({m.model: devices for m, devices in zip(case.models, combination)})
        used = len(placement.devices_used())
        if (best is None or used < best) and not violated(case, placement):
            best = used
    return best


@PROPERTY_SETTINGS
@given(cases(max_devices=3, max_models=4, exact=True))
def test_on_small_fleets_the_plan_uses_the_fewest_devices_the_evaluator_accepts(case: Case) -> None:
    result = plan(case)
    minimum = brute_force_minimum(at_most_full(case))
    if result is None:
        assert minimum is None
    else:
        assert result.optimal and result.device_count == minimum
