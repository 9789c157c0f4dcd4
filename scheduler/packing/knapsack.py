"""The pricing problem of column generation: the device pattern worth most at the LP's prices.

A bounded knapsack over item types: at most ``limits[t]`` copies of type ``t``, every resource
within capacity. Bounded counts become 0-1 items by binary splitting (1, 2, 4, ... copies), and
prices are scaled to integers for OR-Tools' knapsack solvers; the rounding error is added to the
bound, so that a bound computed from it stays valid.

One resource and a small capacity go to the dynamic programme (under a millisecond on the classic
sets). A large capacity (the Scholl and GI sets weigh items in the hundred thousands, where branch
and bound takes a tenth of a second a call) is first priced on a coarse grid: weights rounded up
give patterns that surely fit, weights rounded down give an upper bound on any pattern's worth.
Only when the coarse pattern is worth nothing to the LP does exact branch and bound run. Several
resources go to branch and bound directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ortools.algorithms.python import knapsack_solver

DP_MAX_CELLS = 4_000_000  # split items x capacity units: about 10 ms of dynamic programming
PRICE_SCALE = 1e9  # prices are at most 1 (one device): nine digits survive the integer rounding


@dataclass(frozen=True)
class Priced:
    pattern: np.ndarray  # copies per type
    worth: float  # the pattern's worth at the prices
    bound: float  # no pattern is worth more (math.inf: unknown, the search ran out of time)


def best_pattern(
    demand: np.ndarray, prices: np.ndarray, limits: np.ndarray, capacity: np.ndarray,
    time_limit_seconds: float, wanted: float = 1.0,
) -> Priced:
    """The best pattern at ``prices``, or on a large capacity the first one found worth more than
    ``wanted`` (with a valid bound beside it)."""
    useful = np.flatnonzero((prices > 0) & (limits > 0))
    if len(useful) == 0:
        return Priced(np.zeros(len(prices), dtype=np.int64), 0.0, 0.0)
    copies, owners = _split(limits[useful])
    weights = demand[useful][owners] * copies[:, None]
    profits = np.round(prices[useful][owners] * copies * PRICE_SCALE).astype(np.int64)
    slack = len(copies) * 0.5 / PRICE_SCALE

    def priced(taken: np.ndarray, bound: float) -> Priced:
        pattern = np.zeros(len(prices), dtype=np.int64)
        np.add.at(pattern, useful[owners[taken]], copies[taken])
        return Priced(pattern, float(prices @ pattern), bound)

    cells = len(copies) * (int(capacity[0]) + 1)
    if demand.shape[1] == 1 and cells <= DP_MAX_CELLS:
        taken, best = _solve("DYNAMIC_PROGRAMMING", profits, weights, capacity, time_limit_seconds)
        return priced(taken, best / PRICE_SCALE + slack)
    coarse_bound = math.inf
    if demand.shape[1] == 1:
        units = max(DP_MAX_CELLS // len(copies) - 1, 1)
        grid = capacity[0] / units
        # Rounded up, every pattern found fits; rounded down, no pattern that fits is missed.
        up = np.ceil(weights / grid - 1e-9).astype(np.int64)
        down = np.floor(weights / grid + 1e-9).astype(np.int64)
        taken_up, _ = _solve("DYNAMIC_PROGRAMMING", profits, up, np.array([units]), time_limit_seconds)
        _, best_down = _solve("DYNAMIC_PROGRAMMING", profits, down, np.array([units]), time_limit_seconds)
        coarse_bound = best_down / PRICE_SCALE + slack
        found = priced(taken_up, coarse_bound)
        if found.worth > wanted or coarse_bound <= wanted:
            return found
    taken, best = _solve("MULTIDIMENSION_BRANCH_AND_BOUND", profits, weights, capacity, time_limit_seconds)
    return priced(taken, min(best / PRICE_SCALE + slack, coarse_bound))


def _solve(
    kind: str, profits: np.ndarray, weights: np.ndarray, capacity: np.ndarray, time_limit_seconds: float
) -> tuple[np.ndarray, float]:
    """(items taken, the solver's best profit) for a 0-1 knapsack; the profit is proven optimal
    unless the time limit stopped the search."""
    solver = knapsack_solver.KnapsackSolver(getattr(knapsack_solver.SolverType, f"KNAPSACK_{kind}_SOLVER"), "pricing")
    solver.set_time_limit(max(time_limit_seconds, 0.01))
    solver.init(profits.tolist(), weights.T.tolist(), capacity.tolist())
    best = solver.solve()
    taken = np.array([solver.best_solution_contains(k) for k in range(len(profits))], dtype=bool)
    return taken, (float(best) if solver.is_solution_optimal() else math.inf)


def _split(limits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary splitting: copies of each 0-1 item, and which type (index into ``limits``) it is.
    A limit L becomes 1, 2, 4, ..., 2^(k-1) and the rest, L - (2^k - 1), where 2^k - 1 <= L:
    in array operations, since a dive prices thousands of times (the loop took a tenth of it)."""
    limits = limits.astype(np.int64)
    powers = np.floor(np.log2(limits + 1)).astype(np.int64)  # k per type: 2^k - 1 <= L < 2^(k+1) - 1
    powers = np.where((1 << (powers + 1)) - 1 <= limits, powers + 1, powers)  # log2's float rounding
    powers = np.where((1 << powers) - 1 > limits, powers - 1, powers)
    rest = limits - ((1 << powers) - 1)
    parts = powers + (rest > 0)
    owners = np.repeat(np.arange(len(limits), dtype=np.int64), parts)
    position = np.arange(len(owners)) - np.repeat(np.cumsum(parts) - parts, parts)
    copies = np.where(position < np.repeat(powers, parts), 1 << position, np.repeat(rest, parts))
    return copies.astype(np.int64), owners
