import itertools

import numpy as np
import pytest

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.scheduler.packing.bounds import dual_feasible_bound, martello_toth_l2
from gpupack.scheduler.packing.heuristic import first_fit_decreasing
from gpupack.scheduler.packing.instance import compile_problem
from gpupack.scheduler.packing.local_search import best_repack, reduce_devices
from gpupack.scheduler.packing.problem import PlacementProblem
from gpupack.scheduler.packing.solver import InfeasibleError, Objective, solve
from gpupack.timing import Deadline

MEM, UTIL = Resource.GPU_MEMORY, Resource.GPU_UTILIZATION


def model(name, memory, util=0.0):
    return ModelFootprint(name, {MEM: memory, UTIL: util})


def gpus(count, memory=100, cost=1.0, prefix="gpu"):
    return tuple(Device(f"{prefix}-{k}", {MEM: memory}, cost=cost) for k in range(1, count + 1))


def fits(problem, result):
    for device in problem.devices:
        totals = result.device_totals.get(device.name)
        if totals:
            for resource, total in totals.items():
                assert total <= problem.limit(device, resource) + 1e-9, (device.name, resource)
    for m in problem.models:
        assert len(result.placement.assignments[m.model]) == problem.replicas.get(m.model, 1)


def test_baseline_is_paid_once_per_used_device():
    # 3 x 30 fit in 100, but not with a 20 baseline; two devices each pay it once.
    models = tuple(model(f"m{i}", 30) for i in range(3))
    assert solve(PlacementProblem(gpus(3), models)).device_count == 1
    problem = PlacementProblem(gpus(3), models, {MEM: 20})
    result = solve(problem)
    assert result.device_count == 2 and result.optimal
    assert sorted(t[MEM] for t in result.device_totals.values()) == [50, 80]
    fits(problem, result)


def test_exact_search_beats_first_fit_decreasing_and_proves_it():
    # First-fit-decreasing needs 5 devices here; 6+4, 6+4, 5+5, 3+3+2+2 is 4.
    sizes = [6, 6, 5, 5, 4, 4, 2, 2, 3, 3]
    problem = PlacementProblem(gpus(10, memory=10), tuple(model(f"m{i}", s) for i, s in enumerate(sizes)))
    result = solve(problem, time_limit_seconds=5)
    assert result.device_count == 4 and result.optimal
    fits(problem, result)


def _optimum(sizes, capacity):
    return min(
        len(set(bins)) for bins in itertools.product(range(len(sizes)), repeat=len(sizes))
        if all(sizes[np.array(bins) == b].sum() <= capacity for b in set(bins))
    )


def test_lower_bounds_never_exceed_the_optimum_and_beat_the_volume_bound():
    rng = np.random.default_rng(3)
    for _ in range(20):
        sizes = rng.integers(1, 10, size=5)
        optimum = _optimum(sizes, 10)
        assert martello_toth_l2(sizes, 10) <= optimum
        assert dual_feasible_bound(sizes, 10) <= optimum
    # Four items over half a device: volume says 3, both bounds say 4.
    assert martello_toth_l2(np.array([6, 6, 6, 6]), 10) == 4
    assert dual_feasible_bound(np.array([6, 6, 6, 6]), 10) == 4


def test_lower_bound_never_exceeds_what_the_solver_finds():
    rng = np.random.default_rng(7)
    for seed in range(5):
        sizes = rng.integers(5, 60, size=15)
        problem = PlacementProblem(gpus(15), tuple(model(f"m{i}", int(s)) for i, s in enumerate(sizes)))
        result = solve(problem, time_limit_seconds=2)
        assert result.lower_bound <= result.device_count
        fits(problem, result)


def test_min_cost_prefers_one_big_cheap_device_over_two_small_ones():
    devices = gpus(2, memory=100, cost=1.0, prefix="small") + gpus(1, memory=200, cost=1.5, prefix="big")
    problem = PlacementProblem(devices, (model("a", 90), model("b", 90)))
    assert solve(problem, [Objective.MIN_COST]).placement.devices_used() == ("big-1",)
    assert solve(problem, [Objective.MIN_DEVICES]).device_count == 1


def test_balance_spreads_models_over_the_given_devices():
    problem = PlacementProblem(gpus(2), (model("a", 40), model("b", 40)), limits={})
    result = solve(problem, [Objective.BALANCE])
    assert result.device_count == 2
    assert max(t[MEM] for t in result.device_totals.values()) == 40


def test_devices_first_then_balance_keeps_the_device_count():
    problem = PlacementProblem(gpus(4), tuple(model(f"m{i}", s) for i, s in enumerate([50, 40, 30, 20, 10, 10])))
    result = solve(problem, [Objective.MIN_DEVICES, Objective.BALANCE])
    assert result.device_count == 2 and result.optimal
    assert sorted(t[MEM] for t in result.device_totals.values()) == [80, 80]


def test_min_moves_fixes_an_overfull_device_with_one_move():
    current = Placement({"a": ("gpu-1",), "b": ("gpu-1",), "c": ("gpu-2",), "d": ("gpu-3",)})
    problem = PlacementProblem(
        gpus(3), (model("a", 60), model("b", 60), model("c", 30), model("d", 10)), current=current
    )
    result = solve(problem, [Objective.MIN_MOVES])
    assert result.moves == 1 and result.optimal
    fits(problem, result)


def test_replicas_and_anti_affinity_use_distinct_devices():
    problem = PlacementProblem(
        gpus(4), (model("a", 10), model("b", 10), model("c", 10)),
        anti_affinity=(frozenset({"a", "b"}),), replicas={"c": 3},
    )
    result = solve(problem)
    assert result.placement.assignments["a"] != result.placement.assignments["b"]
    assert len(result.placement.assignments["c"]) == 3
    assert result.device_count == 3 and result.optimal


def test_model_bigger_than_every_device_is_named():
    problem = PlacementProblem(gpus(2), (model("small", 10), model("huge", 150)), {MEM: 5})
    with pytest.raises(InfeasibleError, match="model huge needs"):
        solve(problem)


def test_too_few_devices_says_how_many_are_needed():
    problem = PlacementProblem(gpus(2), tuple(model(f"m{i}", 60) for i in range(3)))
    with pytest.raises(InfeasibleError, match="at least 3 devices, but only 2"):
        solve(problem)


def _used(assignment):
    return {d for ds in assignment.values() for d in ds}


def test_local_search_closes_a_device_no_single_move_can_empty():
    # 6+2+2, 6+3, 5+4, 5+4 and a lone 3: no device has room for the 3, yet 6+4, 6+4, 5+5, 3+3+2+2 is four.
    sizes = [6, 6, 5, 5, 4, 4, 2, 2, 3, 3]
    instance = compile_problem(PlacementProblem(gpus(10, memory=10), tuple(model(f"m{i}", s) for i, s in enumerate(sizes))))
    start = {0: [0], 6: [0], 7: [0], 1: [1], 8: [1], 2: [2], 4: [2], 3: [3], 5: [3], 9: [4]}
    searched = reduce_devices(instance, start, target=4, deadline=Deadline.after(5))
    assert len(_used(searched)) == 4
    for d in _used(searched):
        assert sum(sizes[i] for i, ds in searched.items() if d in ds) <= 10


def test_local_search_leaves_replicas_and_anti_affinity_where_they_are():
    models = (model("a", 50), model("b", 50), model("c", 20), model("d", 20), model("e", 20))
    problem = PlacementProblem(gpus(5), models, anti_affinity=(frozenset({"a", "b"}),), replicas={"c": 2})
    instance = compile_problem(problem)
    start = {0: [0], 1: [1], 2: [0, 1], 3: [2], 4: [3]}
    searched = reduce_devices(instance, start, target=2, deadline=Deadline.after(5))
    assert searched[0] == [0] and searched[1] == [1] and sorted(searched[2]) == [0, 1]
    assert len(_used(searched)) == 2  # d and e join a and b on the two devices they already use


def test_two_device_repack_places_the_most_any_split_can():
    rng = np.random.default_rng(11)
    for _ in range(10):
        demand = rng.integers(1, 60, size=(9, 2))
        rooms = np.array([[100, 100], [90, 110]])
        units = demand.sum(axis=1)
        allowed = rng.random((9, 2)) > 0.1
        first, second = best_repack(demand, units, rooms, allowed)
        assert not set(first) & set(second)
        for chosen, room, k in ((first, rooms[0], 0), (second, rooms[1], 1)):
            assert np.all(demand[chosen].sum(axis=0) <= room) and allowed[chosen, k].all()
        best = 0
        for split in itertools.product((-1, 0, 1), repeat=9):
            split = np.array(split)
            if all(np.all(demand[split == k].sum(axis=0) <= rooms[k]) and allowed[split == k, k].all() for k in (0, 1)):
                best = max(best, int(units[split >= 0].sum()))
        assert units[first].sum() + units[second].sum() == best


def test_large_fleet_never_loses_to_first_fit_decreasing():
    # How long it takes is bench/placement.py's business; here only what the answer is.
    rng = np.random.default_rng(2)
    count = 3000
    models = tuple(
        ModelFootprint(f"m{i}", {MEM: float(m), UTIL: float(u)})
        for i, (m, u) in enumerate(zip(rng.integers(1, 40, count), rng.uniform(0.05, 0.5, count)))
    )
    problem = PlacementProblem(gpus(count), models, limits={f"gpu-{k}": {UTIL: 1.0} for k in range(1, count + 1)})
    result = solve(problem, time_limit_seconds=1.0)
    assert result.device_count <= len(_used(first_fit_decreasing(compile_problem(problem))))
    fits(problem, result)
