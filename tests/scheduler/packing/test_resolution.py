"""The unit the solver works in: coarse where that changes no packing, exact everywhere."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings, strategies as st

from gpupack.domain import Device, ModelFootprint, Resource
from gpupack.scheduler.packing.instance import compile_problem, overfilled
from gpupack.scheduler.packing.problem import PlacementProblem
from gpupack.scheduler.packing.resolution import column_units, scaled

MEM, UTIL = Resource.GPU_MEMORY, Resource.GPU_UTILIZATION
MiB = 2**20


def problem(sizes, capacity, baseline=0.0, utilization=()):
    devices = tuple(Device(f"gpu-{k}", {MEM: float(capacity)}) for k in range(len(sizes)))
    models = tuple(ModelFootprint(f"m{i}", {MEM: float(s), **({UTIL: utilization[i]} if utilization else {})})
                   for i, s in enumerate(sizes))
    return PlacementProblem(devices, models, server_baseline={MEM: baseline})


WHOLE_MIB = np.random.default_rng(7).integers(100, 500, 30)  # sizes of a classic instance, in MiB


def test_sizes_in_whole_mib_are_solved_in_mib():
    instance = compile_problem(problem((WHOLE_MIB * MiB).tolist(), 1000 * MiB, baseline=10 * MiB))
    assert instance.unit.tolist() == [MiB]
    assert instance.demand[:, 0].tolist() == WHOLE_MIB.tolist() and instance.capacity[0, 0] == 990


def test_sizes_a_few_kib_below_whole_mib_are_solved_in_mib_rounded_up():
    less = np.random.default_rng(8).integers(0, 4096, len(WHOLE_MIB), endpoint=True)
    instance = compile_problem(problem((WHOLE_MIB * MiB - less).tolist(), 1000 * MiB))
    assert instance.unit.tolist() == [MiB]
    assert instance.demand[:, 0].tolist() == WHOLE_MIB.tolist()


def test_sizes_with_no_round_structure_keep_their_bytes():
    sizes = np.random.default_rng(9).integers(100 * MiB, 500 * MiB, 30)
    instance = compile_problem(problem(sizes.tolist(), 1000 * MiB))
    assert instance.unit.tolist() == [1] and instance.demand[:, 0].tolist() == sizes.tolist()


def test_utilisation_in_eighths_is_solved_in_eighths():
    instance = compile_problem(problem([MiB, MiB], 4 * MiB, utilization=(0.375, 0.625)))
    assert instance.unit.tolist() == [MiB, 125_000]
    assert instance.demand[:, 1].tolist() == [3, 5] and instance.capacity[0, 1] == 8


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 60), min_size=1, max_size=8),
    st.integers(30, 120),
    st.sampled_from((1, 1000, 1024, MiB)),
    st.integers(0, 5000),
    st.integers(0, 2**32),
)
def test_a_set_of_models_fits_in_solving_units_exactly_when_it_fits_in_bytes(sizes, capacity, unit, most_less, seed):
    less = np.random.default_rng(seed).integers(0, min(most_less, unit - 1), len(sizes), endpoint=True)
    demand = (np.array(sizes, dtype=np.int64) * unit - less)[:, None]
    room = np.array([[capacity * unit]], dtype=np.int64)
    units = column_units(demand, room, np.ones((1, 1), dtype=bool), np.zeros(1, dtype=np.int64))
    assert room[0, 0] % units[0] == 0
    coarse = scaled(demand, units)[:, 0]
    for chosen in itertools.product((False, True), repeat=len(sizes)):
        picked = np.array(chosen)
        assert (demand[picked, 0].sum() <= room[0, 0]) == (coarse[picked].sum() <= room[0, 0] // units[0])


def test_the_final_check_names_a_device_over_its_limit_in_bytes():
    instance = compile_problem(problem([600 * MiB - 1, 500 * MiB], 1000 * MiB))
    assert overfilled(instance, {0: [0], 1: [1]}) == []
    assert overfilled(instance, {0: [1], 1: [1]}) == ["gpu-1"]
