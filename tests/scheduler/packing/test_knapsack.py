"""The pricing problem: the pattern worth most at the LP's prices, within capacity and the counts."""

import itertools

import numpy as np

from gpupack.scheduler.packing.knapsack import best_pattern


def _best_by_enumeration(demand, prices, limits, capacity):
    best = 0.0
    for pattern in itertools.product(*(range(int(limit) + 1) for limit in limits)):
        pattern = np.array(pattern)
        if np.all(pattern @ demand <= capacity):
            best = max(best, float(prices @ pattern))
    return best


def test_the_priced_pattern_is_the_best_any_pattern_within_the_counts_can_be():
    """Counts above one are split into 1, 2, 4, ... copies for the 0-1 solvers: every count from
    none to the limit must stay reachable, and none beyond it."""
    rng = np.random.default_rng(26)
    for _ in range(40):
        types = int(rng.integers(1, 5))
        demand = rng.integers(1, 40, size=(types, 1))
        limits = rng.integers(0, 8, size=types)
        prices = rng.uniform(0.0, 0.5, size=types)
        capacity = np.array([int(rng.integers(20, 120))])
        priced = best_pattern(demand, prices, limits, capacity, 5.0)
        assert np.all(priced.pattern <= limits) and np.all(priced.pattern @ demand <= capacity)
        best = _best_by_enumeration(demand, prices, limits, capacity)
        assert abs(priced.worth - best) < 1e-6
        assert priced.bound >= best - 1e-6
