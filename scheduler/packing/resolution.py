"""The integer unit each column of a placement problem is solved in: the coarsest in which it is
still the same problem, so that the answer does not depend on the unit the sizes came in.

Sizes come in bytes (and ratios in parts per million), but what makes packing fast or slow is
how many units a device holds: the knapsack's dynamic programme, the subset sums of the search on
fewer devices and CP-SAT's coefficients all grow with it. The classic instances packed as small
integers were solved to the optimum and, multiplied by 2^20 (the same problem given in MiB), were
not. So each column is first divided by the greatest common divisor of its sizes, capacities and
baseline, which is exact: a fleet in whole MiB is solved in MiB.

Sizes measured to the byte share no useful divisor, though they often sit just below round
numbers (a model of 1,000 MiB less a few KiB). A coarser unit ``q`` that divides every capacity
and the baseline is then tried, sizes rounded up to it. A device that holds some models in bytes
holds at most ``m`` of them (its smallest models first), so their rounded sizes exceed their true
ones by at most the sum ``E`` of the ``m`` largest rounding-ups; when ``E < q``, every set of
models that fits in bytes still fits once rounded (the capacity is a whole number of units, and
the rounded sum exceeds it by less than one unit, so not at all), and every rounded set that fits
fits in bytes (rounding up only adds). The two problems have the same packings, so the bounds,
the LP, the dive, the searches and CP-SAT all work on the rounded one and every answer is exact.
Where no such unit exists (sizes with no round structure) the column keeps its exact units.
"""

from __future__ import annotations

import math

import numpy as np

# The primes of the units people and devices use (KiB, MB, GiB, 80 GiB, 48 GB, 1 000 MiB).
UNIT_PRIMES = (2, 3, 5, 7)


def column_units(demand: np.ndarray, capacity: np.ndarray, bounded: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Per column, how many base units (bytes, millionths, models) one solving unit is: the
    coarsest with the same packings as the exact problem. ``demand`` [model, column] and
    ``capacity`` [device, column] are whole base units, capacity after the baseline."""
    most = _most_models(demand, capacity, bounded)
    units = np.ones(demand.shape[1], dtype=np.int64)
    for k in range(demand.shape[1]):
        limits = capacity[bounded[:, k], k]
        exact = math.gcd(_gcd(demand[:, k]), _gcd(limits), int(baseline[k])) or 1
        room = math.gcd(_gcd(limits // exact), int(baseline[k]) // exact)
        held = most[bounded[:, k]]
        coarser = _coarsest_rounding(demand[:, k] // exact, room, int(held.max()) if len(held) else 0)
        units[k] = exact * coarser
    return units


def scaled(values: np.ndarray, units: np.ndarray) -> np.ndarray:
    """``values`` [..., column] in solving units, rounded up: exact wherever ``units`` divides them."""
    return -(-values // units)


def _coarsest_rounding(sizes: np.ndarray, room: int, most: int) -> int:
    """The largest ``q`` dividing ``room`` (made of UNIT_PRIMES) for which any ``most`` models
    round up by less than ``q`` in all; 1 when none does."""
    if room <= 1 or most == 0:
        return 1
    for q in sorted(_divisors(room), reverse=True):
        if q == 1:
            break
        rounding_up = (-sizes) % q
        if most < len(sizes):
            rounding_up = np.partition(rounding_up, len(sizes) - most)[len(sizes) - most :]
        if int(rounding_up.sum()) < q:
            return q
    return 1


def _divisors(n: int) -> list[int]:
    divisors = [1]
    for p in UNIT_PRIMES:
        powers, rest = [1], n
        while rest % p == 0:
            rest //= p
            powers.append(powers[-1] * p)
        divisors = [d * power for d in divisors for power in powers]
    return divisors


def _most_models(demand: np.ndarray, capacity: np.ndarray, bounded: np.ndarray) -> np.ndarray:
    """[device]: the most models it can hold, by the smallest first in each bounded column."""
    most = np.full(capacity.shape[0], demand.shape[0], dtype=np.int64)
    for k in range(demand.shape[1]):
        prefix = np.cumsum(np.sort(demand[:, k]))
        held = np.searchsorted(prefix, capacity[:, k], side="right")
        most = np.where(bounded[:, k], np.minimum(most, held), most)
    return most


def _gcd(values: np.ndarray) -> int:
    return int(np.gcd.reduce(np.abs(values))) if len(values) else 0
