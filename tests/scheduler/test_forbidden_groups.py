"""Groups of models measured to break a budget together are never all planned on one device, on
every path the solver can take: first fit, the local search, column generation's hand-off, CP-SAT,
and the demand planner's priced choice and joint model."""

import dataclasses
import json

import pytest
from hypothesis import given, settings, strategies as st

from gpupack.demand import ModelDemand
from gpupack.domain import Device, ModelFootprint, Resource
from gpupack.model_configs import ConfigPoint, ModelConfig
from gpupack.profiles import Profile
from gpupack.scheduler.demand.plan import plan_for_demand
from gpupack.scheduler.packing.colgen import declines
from gpupack.scheduler.packing.cpsat import solve_exact
from gpupack.scheduler.packing.heuristic import first_fit_decreasing
from gpupack.scheduler.packing.instance import compile_problem, together
from gpupack.scheduler.packing.local_search import reduce_devices
from gpupack.scheduler.packing.problem import InfeasibleError, PlacementProblem, ProofStatus
from gpupack.scheduler.packing.solver import Objective, Strategy, solve
from gpupack.timing import Deadline

MEM, UTIL = Resource.GPU_MEMORY, Resource.GPU_UTILIZATION


def model(name, memory, util=0.0):
    return ModelFootprint(name, {MEM: memory, UTIL: util})


def gpus(count, memory=100):
    return tuple(Device(f"gpu-{k}", {MEM: memory}) for k in range(1, count + 1))


def shared_devices(placement, group):
    return set.intersection(*(set(placement.assignments[m]) for m in group))


def test_two_models_that_fit_one_device_are_planned_apart_when_forbidden_together():
    models = (model("a", 30), model("b", 30))
    assert solve(PlacementProblem(gpus(2), models)).device_count == 1
    result = solve(PlacementProblem(gpus(2), models, forbidden_groups=(frozenset({"a", "b"}),)))
    assert result.device_count == 2
    assert result.placement.assignments["a"] != result.placement.assignments["b"]
    assert result.proof is not None and result.proof.status is ProofStatus.OPTIMAL  # cp-sat proves 2


def test_a_forbidden_group_of_three_may_still_share_a_device_two_at_a_time():
    models = (model("a", 30), model("b", 30), model("c", 30))
    result = solve(PlacementProblem(gpus(3), models, forbidden_groups=(frozenset("abc"),)))
    assert result.device_count == 2 and result.optimal
    assert not shared_devices(result.placement, "abc")


def test_first_fit_skips_the_device_that_would_complete_a_group():
    problem = PlacementProblem(gpus(3), (model("a", 40), model("b", 30), model("c", 20)),
                               forbidden_groups=(frozenset({"a", "b"}),))
    instance = compile_problem(problem)
    assignment = first_fit_decreasing(instance)
    assert assignment is not None and not together(instance, assignment)
    assert assignment[0] != assignment[1] and assignment[2] == assignment[0]  # c still joins a


def test_cp_sat_alone_honours_the_no_good_cut():
    problem = PlacementProblem(gpus(3), (model("a", 10), model("b", 10), model("c", 10)),
                               forbidden_groups=(frozenset({"a", "b"}), frozenset({"b", "c"})))
    instance = compile_problem(problem)
    outcome = solve_exact(instance, (Objective.MIN_DEVICES,), 5.0, None)
    assert outcome.proven and outcome.assignment is not None
    assert not together(instance, outcome.assignment)
    assert len({d for ds in outcome.assignment.values() for d in ds}) == 2


def test_the_local_search_leaves_members_of_a_forbidden_group_where_they_are():
    problem = PlacementProblem(gpus(4), (model("a", 50), model("b", 50), model("c", 20), model("d", 20)),
                               forbidden_groups=(frozenset({"a", "b"}),))
    instance = compile_problem(problem)
    spread = {0: [0], 1: [1], 2: [2], 3: [3]}
    reduced = reduce_devices(instance, spread, 2, Deadline.after(2.0), 1.0)
    assert reduced is not None and not together(instance, reduced)
    assert reduced[0] == [0] and reduced[1] == [1]


def test_column_generation_hands_a_problem_with_forbidden_groups_to_cp_sat_and_says_so():
    problem = PlacementProblem(gpus(4), tuple(model(f"m{i}", 25) for i in range(8)),
                               forbidden_groups=(frozenset({"m0", "m1"}),))
    assert "forbidden groups" in declines(compile_problem(problem), (Objective.MIN_DEVICES,))


def test_a_fleet_column_generation_would_price_keeps_every_forbidden_group_apart():
    # Hard enough that first fit is above the bound (column generation's case), with groups.
    sizes = [49, 49, 34, 33, 33, 26, 26, 25, 25, 25, 17, 17, 16, 16, 15] * 3
    models = tuple(model(f"m{i}", s) for i, s in enumerate(sizes))
    groups = tuple(frozenset({f"m{i}", f"m{i + 1}", f"m{i + 2}"}) for i in range(0, len(sizes) - 2, 3))
    for strategy in Strategy:
        result = solve(PlacementProblem(gpus(len(sizes)), models, forbidden_groups=groups),
                       time_limit_seconds=3.0, strategy=strategy)
        assert all(not shared_devices(result.placement, g) for g in groups), strategy


def test_a_pinned_group_that_can_only_be_together_is_infeasible_and_the_message_names_the_group():
    problem = PlacementProblem(gpus(2), (model("a", 10), model("b", 10)),
                               allowed_devices={"a": frozenset({"gpu-1"}), "b": frozenset({"gpu-1"})},
                               forbidden_groups=(frozenset({"a", "b"}),))
    with pytest.raises(InfeasibleError, match="a, b"):
        solve(problem, time_limit_seconds=2.0)


def test_a_group_of_one_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        PlacementProblem(gpus(1), (model("a", 10),), forbidden_groups=(frozenset({"a"}),))


def test_the_demand_planner_keeps_forbidden_models_apart_in_its_priced_choice_and_joint_model():
    def config(memory, util):
        return ModelConfig(name="only", peak_gpu_memory_bytes=memory, points=(
            ConfigPoint(throughput_per_second=100.0, latency_p99_seconds=0.01, peaks={UTIL: util}),))
    names = ("a", "b", "c")
    profile = Profile({}, tuple(model(n, 10, 0.3) for n in names), configs={n: (config(10, 0.3),) for n in names})
    demands = [ModelDemand(n, 50.0, 0.05) for n in names]
    base = PlacementProblem(tuple(Device(f"gpu-{k}", {MEM: 100}) for k in range(1, 4)), profile.models)
    assert plan_for_demand(profile, demands, base, time_limit_seconds=3.0).result.device_count == 1
    forbidden = dataclasses.replace(base, forbidden_groups=(frozenset({"a", "b"}),))
    plan = plan_for_demand(profile, demands, forbidden, time_limit_seconds=3.0)
    assert plan.result.device_count == 2
    assert not shared_devices(plan.result.placement, "ab")


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(5, 60), min_size=3, max_size=9), data=st.data())
def test_no_plan_ever_puts_a_whole_forbidden_group_on_one_device(sizes, data):
    names = [f"m{i}" for i in range(len(sizes))]
    groups = data.draw(st.lists(st.sets(st.sampled_from(names), min_size=2, max_size=3), max_size=4))
    problem = PlacementProblem(gpus(len(sizes)), tuple(model(n, s) for n, s in zip(names, sizes)),
                               forbidden_groups=tuple(frozenset(g) for g in groups))
    instance = compile_problem(problem)
    first = first_fit_decreasing(instance)
    assert first is not None and not together(instance, first)
    result = solve(problem, (Objective.MIN_DEVICES, Objective.BALANCE), time_limit_seconds=1.0)
    assert all(not shared_devices(result.placement, g) for g in problem.forbidden_groups)
    # Never more devices than one per model, and never fewer than without the groups.
    plain = solve(dataclasses.replace(problem, forbidden_groups=()), time_limit_seconds=1.0)
    assert plain.device_count <= result.device_count <= len(sizes)


COLOCATED_PROFILE = """\
server_baseline: {peak_gpu_memory_bytes: 0}
models:
  - {model: heavy-a, peak_gpu_memory_bytes: 64MiB, throughput_per_second: 20, latency_p99_seconds: 0.1,
     peak_gpu_utilization_ratio: 40%}
  - {model: heavy-b, peak_gpu_memory_bytes: 64MiB, throughput_per_second: 20, latency_p99_seconds: 0.1,
     peak_gpu_utilization_ratio: 40%}
colocations:
  - peak_gpu_memory_bytes: 140MiB
    peak_gpu_utilization_ratio: 100%
    models:
      - {model: heavy-a, request_rate_per_second: 8, throughput_per_second: THROUGHPUT, latency_p99_seconds: P99}
      - {model: heavy-b, request_rate_per_second: 8, throughput_per_second: THROUGHPUT, latency_p99_seconds: P99}
"""


def plan_with_colocations(tmp_path, capsys, p99, throughput, *extra):
    from gpupack.app.cli import main

    (tmp_path / "profile.yaml").write_text(COLOCATED_PROFILE.replace("P99", str(p99)).replace("THROUGHPUT", str(throughput)))
    (tmp_path / "demand.yaml").write_text("demand:\n  - {model: heavy-a, rate_per_second: 8, latency_p99_seconds: 0.25}\n"
                                          "  - {model: heavy-b, rate_per_second: 8, latency_p99_seconds: 0.25}\n")
    status = main(["plan", "--profile", str(tmp_path / "profile.yaml"), "--device-memory", "1GiB", "--format", "json",
                   *[a.replace("DEMAND", str(tmp_path / "demand.yaml")) for a in extra]])
    assert status == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("p99, throughput, devices", [(1.2, 8, 2), (0.1, 8, 1), (0.1, 5, 2)])
def test_a_demand_plan_keeps_apart_a_group_the_profile_measured_over_budget_or_falling_behind(
        tmp_path, capsys, p99, throughput, devices):
    document = plan_with_colocations(tmp_path, capsys, p99, throughput, "--demand", "DEMAND")
    assert document["device_count"] == devices


def test_a_plain_plan_keeps_apart_a_group_measured_falling_behind(tmp_path, capsys):
    assert plan_with_colocations(tmp_path, capsys, 1.2, 8)["device_count"] == 1  # no budget without a demand
    assert plan_with_colocations(tmp_path, capsys, 0.1, 5)["device_count"] == 2
