"""Throughput policies in plans: as many copies as demand needs, and never fewer during a move."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.rules.compiled import Fleet, FleetDevice, compile_policies
from gpupack.rules.loader import load_policies
from gpupack.scheduler.constraints import problem_from
from gpupack.scheduler.rebalance.moves import check_order, plan_moves
from gpupack.scheduler.rebalance.steps import Budget, Step
from gpupack.scheduler.packing.problem import InfeasibleError, Objective
from gpupack.scheduler.packing.solver import solve

MEM = Resource.GPU_MEMORY
POLICY = ("policies:\n  - {name: serve-demand, resource: throughput, min: 100%, headroom: 20%, max: 300%, "
          "action: rebalance}\n")


def _problem(tmp_path: Path, demand: float, capacity: float = 15.0, current: Placement | None = None,
             policy: str = POLICY):
    path = tmp_path / "p.yaml"
    path.write_text(policy)
    devices = tuple(Device(f"GPU-{i}", {MEM: 1000.0}) for i in range(3))
    models = (ModelFootprint("small", {MEM: 100.0}), ModelFootprint("other", {MEM: 100.0}))
    fleet = Fleet(tuple(FleetDevice(d) for d in devices), ("other", "small"), {"small": demand, "other": 1.0},
                  {"small": capacity, "other": 15.0})
    return problem_from(compile_policies(load_policies(path), fleet), models, devices, {}, current=current)


@pytest.mark.parametrize(("demand", "copies"), [(0.0, 1), (12.5, 1), (20.0, 2), (30.0, 3)])
def test_a_plan_runs_as_many_copies_as_demand_times_headroom_needs(tmp_path, demand, copies):
    problem = _problem(tmp_path, demand)
    placement = solve(problem, (Objective.MIN_DEVICES,), 5.0).placement
    assert len(placement.assignments["small"]) == copies
    assert len(placement.assignments["other"]) == 1


def test_when_demand_falls_the_fewest_moves_plan_drops_the_extra_copies(tmp_path):
    current = Placement({"small": ("GPU-0", "GPU-1", "GPU-2"), "other": ("GPU-0",)})
    problem = _problem(tmp_path, 2.0, current=current)
    target = solve(problem, (Objective.MIN_MOVES,), 5.0).placement
    assert len(target.assignments["small"]) == 1 and set(target.assignments["small"]) < {"GPU-0", "GPU-1", "GPU-2"}
    plan = plan_moves(current, target, Budget.from_problem(problem))
    assert plan.safe and {s.kind for s in plan.steps} == {"unload"} and len(plan.steps) == 2


@pytest.mark.parametrize(("demand", "policy", "copies"), [
    (10.0, POLICY, 2),  # 12/s needed: three copies (45/s) are above 300% (36/s), two (30/s) are not
    (14.0, POLICY, 3),  # 16.8/s needed: three copies are within 300% (50.4/s), so all stay
    (2.0, POLICY.replace(", max: 300%", ""), 3),  # without max there is no consolidation signal
])
def test_copies_are_kept_unless_above_the_policys_max(tmp_path, demand, policy, copies):
    current = Placement({"small": ("GPU-0", "GPU-1", "GPU-2"), "other": ("GPU-0",)})
    problem = _problem(tmp_path, demand, current=current, policy=policy)
    assert problem.replicas["small"] == copies


def test_a_copy_that_serves_nothing_is_named_as_infeasible(tmp_path):
    with pytest.raises(InfeasibleError, match="model small: one copy serves nothing"):
        _problem(tmp_path, 5.0, capacity=0.0)


def test_no_step_leaves_fewer_copies_than_demand_needs_even_when_unloading_first_would_fit(tmp_path):
    # Demand needs two copies. Moving small from GPU-0 to GPU-2 must load before it unloads,
    # and an unload of the copy on GPU-1 before a new one is ready is refused.
    problem = _problem(tmp_path, 20.0)
    budget = Budget.from_problem(problem)
    assert budget.min_copies["small"] == 2
    current = Placement({"small": ("GPU-0", "GPU-1"), "other": ("GPU-2",)})
    refused = check_order(current, [Step("small", "GPU-1", None), Step("small", None, "GPU-2")], budget)
    assert refused == "step 1 (unload small from GPU-1): unloading small would leave 1 of the 2 copies its demand needs"
    assert check_order(current, [Step("small", None, "GPU-2"), Step("small", "GPU-1", None)], budget) is None
    plan = plan_moves(current, Placement({"small": ("GPU-0", "GPU-2"), "other": ("GPU-2",)}), budget)
    assert plan.safe and plan.steps == (Step("small", "GPU-1", "GPU-2"),)
