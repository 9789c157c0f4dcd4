"""The dive through the LP: a packing on exactly the LP bound's device count, found by backtracking."""

import numpy as np

from gpupack.domain import Device, ModelFootprint, Resource
from gpupack.scheduler.packing import colgen, dive
from gpupack.scheduler.packing.heuristic import first_fit_decreasing
from gpupack.scheduler.packing.instance import compile_problem
from gpupack.scheduler.packing.problem import PlacementProblem
from gpupack.timing import Deadline

MEM = Resource.GPU_MEMORY
# 20 triplets that each fill a 1000-unit device exactly (Falkenauer_t60_01, three by three): the
# optimum is 20 devices, first-fit-decreasing uses 23, and one dive through the LP ends on 21.
TRIPLETS = (
    475, 269, 256, 473, 267, 260, 468, 270, 262, 465, 280, 255, 462, 277, 261, 447, 302, 251, 444, 305,
    251, 426, 314, 260, 423, 319, 258, 412, 313, 275, 411, 307, 282, 409, 339, 252, 403, 308, 289, 402,
    333, 265, 399, 347, 254, 396, 340, 264, 396, 304, 300, 382, 361, 257, 376, 366, 258, 369, 334, 297,
)


def triplet_instance():
    devices = tuple(Device(f"gpu-{k}", {MEM: 1000}) for k in range(len(TRIPLETS)))
    models = tuple(ModelFootprint(f"m{i}", {MEM: float(s)}) for i, s in enumerate(TRIPLETS))
    return compile_problem(PlacementProblem(devices, models))


def devices_used(assignment):
    return len({d for ds in assignment.values() for d in ds})


def test_column_generation_packs_the_triplets_on_the_lp_bound_where_first_fit_cannot():
    instance = triplet_instance()
    ffd = first_fit_decreasing(instance)
    assert devices_used(ffd) == 23
    lp = colgen.ColumnGeneration(instance, ffd)
    assert lp.root(Deadline.after(60), devices_used(ffd)).lp_bound == 20
    found = lp.search(Deadline.after(60), devices_used(ffd))
    assert devices_used(found) == 20
    assert sorted(found) == list(range(len(TRIPLETS)))
    loads = np.zeros(20)
    for model, (device,) in found.items():
        loads[device] += TRIPLETS[model]
    assert (loads == 1000).all()


def _master_and_bound(instance):
    types = colgen.item_types(instance)
    master = colgen._Master(types, colgen._initial_columns(instance, types, None))
    master.drop_exchanges()  # as ColumnGeneration.root does before any dive
    deadline = Deadline.after(60)

    def bound(rest, room):
        master.set_residual(rest)
        return colgen._generate(master, rest, deadline)[1]

    return master, types.counts.copy(), bound, deadline


def test_backtracking_reaches_the_target_the_plain_dive_misses():
    master, residual, bound, deadline = _master_and_bound(triplet_instance())
    fixed, rest = dive.plain_dive(master, residual, deadline, bound)
    assert len(fixed) > 20 and not rest.any()
    found = dive.discrepancy_dive(master, residual, deadline, bound, 20)
    assert found is not None and len(found) == 20
    assert (np.sum(found, axis=0) == residual).all()


def test_a_target_below_the_lp_bound_ends_the_search_without_a_packing():
    master, residual, bound, deadline = _master_and_bound(triplet_instance())
    assert dive.discrepancy_dive(master, residual, deadline, bound, 19) is None
    assert not deadline.passed()  # the search ran out of candidates, not of time
