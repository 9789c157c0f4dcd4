"""The search that packs onto exactly the bound's device count."""

import numpy as np

from gpupack.domain import Device, ModelFootprint, Resource
from gpupack.rules.policy import CapacityPolicy, PolicySet
from gpupack.scheduler.constraints import build_problem
from gpupack.scheduler.packing.fixed_count import pack_fewer, pack_onto
from gpupack.scheduler.packing.heuristic import first_fit_decreasing
from gpupack.scheduler.packing.instance import compile_problem
from gpupack.scheduler.packing.problem import PlacementProblem, ProofStatus
from gpupack.scheduler.packing.solver import solve
from gpupack.timing import Deadline

MEM = Resource.GPU_MEMORY
UTIL = Resource.GPU_UTILIZATION


def triplets(count: int, capacity: int = 1000, seed: int = 3) -> PlacementProblem:
    """``count`` devices' worth of models in threes that fill a device exactly (Falkenauer's triplets)."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(count):
        a = int(rng.integers(capacity // 4 + 1, capacity // 2))
        b = int(rng.integers(capacity // 4 + 1, (capacity - a) // 2 + 1))
        sizes += [a, b, capacity - a - b]
    rng.shuffle(sizes)
    devices = tuple(Device(f"gpu-{k}", {MEM: float(capacity)}) for k in range(len(sizes)))
    models = tuple(ModelFootprint(f"m{i}", {MEM: float(s)}) for i, s in enumerate(sizes))
    return PlacementProblem(devices, models)


def test_packs_triplets_onto_the_device_count_first_fit_misses():
    instance = compile_problem(triplets(8))
    start = first_fit_decreasing(instance)
    assert len({d for ds in start.values() for d in ds}) > 8
    packed = pack_onto(instance, start, 8, Deadline.after(60))
    assert packed is not None and sorted(packed) == list(range(instance.n_models))
    devices = {d for ds in packed.values() for d in ds}
    assert len(devices) == 8
    for d in devices:
        load = sum(instance.demand[i, 0] for i, ds in packed.items() if ds == [d])
        assert load <= instance.capacity[d, 0]


def test_gives_up_at_the_deadline_when_the_count_is_too_few():
    instance = compile_problem(triplets(4))
    assert pack_onto(instance, first_fit_decreasing(instance), 3, Deadline.after(0.2)) is None


def devices_used(assignment):
    return {d for ds in assignment.values() for d in ds}


def assert_within_capacity(instance, assignment):
    assert sorted(assignment) == list(range(instance.n_models))
    for d in devices_used(assignment):
        assert sum(instance.demand[i, 0] for i, ds in assignment.items() if ds == [d]) <= instance.capacity[d, 0]


def test_one_resource_packs_triplets_with_every_device_exactly_full():
    instance = compile_problem(triplets(30, seed=5))
    start = first_fit_decreasing(instance)
    assert len(devices_used(start)) > 30
    packed = pack_fewer(instance, start, 30, Deadline.after(60))
    assert packed is not None and len(devices_used(packed)) == 30
    assert_within_capacity(instance, packed)


def test_one_resource_steps_down_as_far_as_it_gets_when_the_bound_is_out_of_reach():
    instance = compile_problem(triplets(8))
    start = first_fit_decreasing(instance)
    packed = pack_fewer(instance, start, 7, Deadline.after(1.0))  # 7 cannot hold 8 full devices' worth
    assert packed is not None and len(devices_used(packed)) == 8
    assert_within_capacity(instance, packed)


def test_two_resources_pack_onto_the_bound_by_the_overload_search():
    one = triplets(8)
    models = tuple(ModelFootprint(m.model, {MEM: m.peak(MEM), UTIL: 0.1}) for m in one.models)
    full = PolicySet(tuple(CapacityPolicy(name=f"{r.value}-100", resource=r, max_ratio=1.0) for r in (MEM, UTIL)))
    instance = compile_problem(build_problem(models, one.devices, {}, full))
    assert instance.demand.shape[1] == 2
    start = first_fit_decreasing(instance)
    assert len(devices_used(start)) > 8
    packed = pack_fewer(instance, start, 8, Deadline.after(60))
    assert packed is not None and len(devices_used(packed)) == 8
    for d in devices_used(packed):
        on = [i for i, ds in packed.items() if ds == [d]]
        assert (instance.demand[on].sum(axis=0) <= instance.capacity[d]).all()


def test_plan_of_triplets_fills_every_device_and_proves_the_count():
    result = solve(triplets(40, seed=11), time_limit_seconds=30)
    assert result.device_count == 40 and result.optimal
    assert result.proof is not None and result.proof.status is ProofStatus.OPTIMAL


def test_one_resource_packs_triplets_measured_to_the_byte_on_80_gib_devices():
    """Sizes with no round unit keep their bytes (80 GiB devices): the search's subset sums must
    not need a bit per byte of capacity (10 GB) to find the last two devices."""
    instance = compile_problem(triplets(12, capacity=80 * 2**30, seed=5))
    assert instance.unit.tolist() == [1]
    start = first_fit_decreasing(instance)
    assert len(devices_used(start)) > 12
    packed = pack_fewer(instance, start, 12, Deadline.after(60))
    assert packed is not None and len(devices_used(packed)) == 12
    assert_within_capacity(instance, packed)
