"""The unit sizes come in does not change the answer: the same problem given as small integers,
in MiB or in bytes times a prime gets the same device count and the same proof.

The solver works in the coarsest unit with the same packings (scheduler/packing/resolution.py).
Before it did, the classic instances multiplied by 2^20 ended a device above the optimum they
reached as integers, with "column generation stopped before the LP converged".
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from gpupack.domain import Device, ModelFootprint, Resource
from gpupack.scheduler.packing.problem import PlacementProblem, ProofStatus
from gpupack.scheduler.packing.solver import solve

from tests.properties.fleets import ScalableFleet, scalable_fleets

# As small integers, in MiB, and in bytes times a prime (no unit people use divides it).
SCALES = (1, 2**20, 10**6 + 3)
# Classic 1-D instances (BPPLIB) with their known optima: triplets that fill every device exactly,
# a Scholl instance whose optimum only the LP bound proves, and one of uniform sizes.
CLASSIC = {"Falkenauer_t120_00": 40, "N1W1B1R0": 18, "Falkenauer_u120_00": 48}
INSTANCES = Path(__file__).parent / "bpp1d"


MiB = 2**20


def classic(name: str, k: int, less: Sequence[int] = ()) -> PlacementProblem:
    """The instance with sizes and capacity times ``k`` bytes, each size ``less`` some bytes."""
    numbers = [int(x) for x in (INSTANCES / f"{name}.txt").read_text().split()]
    count, capacity, sizes = numbers[0], numbers[1], numbers[2 : 2 + numbers[0]]
    less = less or [0] * count
    devices = tuple(Device(f"gpu-{j}", {Resource.GPU_MEMORY: float(capacity * k)}) for j in range(count))
    models = tuple(ModelFootprint(f"m{i}", {Resource.GPU_MEMORY: float(s * k - d)})
                   for i, (s, d) in enumerate(zip(sizes, less)))
    return PlacementProblem(devices, models)


def answer(problem: PlacementProblem) -> tuple[int, ProofStatus]:
    result = solve(problem, time_limit_seconds=10.0)
    assert result.proof is not None
    return result.device_count, result.proof.status


@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_classic_instance_reaches_its_optimum_in_any_unit(name):
    answers = {k: answer(classic(name, k)) for k in SCALES}
    assert answers == {k: (CLASSIC[name], ProofStatus.OPTIMAL) for k in SCALES}


def test_sizes_measured_to_the_byte_just_below_whole_mib_reach_the_same_optimum():
    """Profiles measure bytes: each size a few KiB below a whole MiB is still solved in MiB, and
    no device holds more than its capacity in bytes."""
    name = "Falkenauer_t120_00"
    less = np.random.default_rng(26).integers(0, 4096, 120, endpoint=True).tolist()
    problem = classic(name, MiB, less)
    result = solve(problem, time_limit_seconds=10.0)
    assert result.device_count == CLASSIC[name] and result.optimal
    assert max(t[Resource.GPU_MEMORY] for t in result.device_totals.values()) <= 1000 * MiB


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scalable_fleets())
def test_random_fleet_gets_the_same_answer_in_any_unit(fleet: ScalableFleet):
    answers = {k: answer(fleet.problem(k)) for k in SCALES}
    assert len(set(answers.values())) == 1, answers
