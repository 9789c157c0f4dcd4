"""Column generation (Gilmore-Gomory) on identical devices: the LP bound that proves optimality
where the combinatorial bounds cannot, and a dive through the LP that turns it into a placement.

Models with the same demand vector form one item type. The master LP covers every type's count by
device patterns at one device each; its dual prices each type, and the pricing problem (a bounded,
multi-dimensional knapsack, :mod:`gpupack.scheduler.packing.knapsack`) finds the pattern worth most at
those prices. On nearly every classic bin-packing instance the rounded-up LP value is the optimum
(the IRUP property), which is why this bound proves packings that the volume, L2 and dual-feasible
bounds leave open. Before the LP converges, Farley's bound (LP value / best pattern's worth) is
already valid, so a run stopped early still proves what it can. With one resource, exchange
columns keep the duals ordered by size, which cuts the root LP's iterations where the sizes are
many and distinct.

The placement comes from diving (:mod:`gpupack.scheduler.packing.dive`): patterns of the LP's solution
are fixed one at a time and the LP re-solved, with fresh columns priced, on what is left; the
solver (solver.py) runs the phases of :class:`ColumnGeneration` one by one, with its own searches
between them. The master LP is HiGHS (``highspy``): it re-solves from the last basis as columns are
added and row bounds lowered, which a dive does thousands of times.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import highspy
from highspy._core import _Highs
import numpy as np

from gpupack import timing
from gpupack.scheduler.packing.heuristic import Assignment
from gpupack.scheduler.packing.instance import Instance
from gpupack.scheduler.packing.dive import Bound, discrepancy_dive, plain_dive
from gpupack.scheduler.packing.knapsack import best_pattern
from gpupack.scheduler.packing.pool_mip import PoolSearch
from gpupack.scheduler.packing.problem import Objective
from gpupack.timing import Deadline

# A column enters only if its reduced cost is below -REDUCED_COST_TOLERANCE, and LP values this
# close to an integer round to it: HiGHS's default tolerances are 1e-7.
REDUCED_COST_TOLERANCE = 1e-7
ROUNDING_TOLERANCE = 1e-6
# Above this many distinct demand vectors (a large fleet of 3-resource models: every one distinct)
# the pricing problem gets slow and the local search uses the time better.
MAX_ITEM_TYPES = 700
DUAL_SIMPLEX, PRIMAL_SIMPLEX = 1, 4  # HiGHS's simplex_strategy values
SMOOTHING = 0.8  # weight of the best dual so far in the prices the pricing problem sees
# The root LP gives up where it could raise the bound by one device at most and its pace says it
# cannot converge by its deadline (:class:`Pace`), judged over the last PACE_WINDOW_SHARE of its run
# once PACE_MIN_SHARE of its time has passed. csBB500_1's root LP (500 sizes, 5,331 models) closes
# its gap ever slower and would need ten seconds and more: it gives up after 2 s of its 3.4, where
# HARD9's, whose Farley bound stays put for its first 0.9 s, and all of Hard28's and the Falkenauer
# triplets' converge as before (measured on all 91 classic instances).
PACE_WINDOW_SHARE = 1 / 2
PACE_MIN_SHARE = 1 / 3
# PlacementProblem fields that column generation honours (capacity limits, the baseline), checks
# on the compiled instance (pins, anti-affinity, replicas, fleet size), or that restrict nothing.
MODELLED_FIELDS = {
    "devices", "models", "server_baseline", "limits", "current", "constraint_sources",
    "allowed_devices", "anti_affinity", "replicas", "max_devices",
    "device_baselines",  # in the instance's capacity: devices with different baselines differ in size
}


@dataclass(frozen=True)
class ItemTypes:
    """Models grouped by demand vector: ``demand[t]`` is the vector, ``members[t]`` the models."""

    demand: np.ndarray  # [type, resource] int64
    counts: np.ndarray  # [type] int64
    members: tuple[np.ndarray, ...]
    capacity: np.ndarray  # [resource] int64, the same on every device


@dataclass(frozen=True)
class RootLP:
    lp_bound: int  # a proven lower bound on devices: ceil of the LP value, or of Farley's bound
    lp_value: float  # the master LP's value when it stopped (an upper bound on the LP optimum)
    converged: bool  # True: lp_bound is ceil(LP optimum); False: stopped early
    columns: int  # patterns generated
    hopeless: bool = False  # stopped before its deadline: at its pace it would not converge by then


class Pace:
    """Whether a root LP can still converge by its deadline. The gap between the master's value
    (above the LP optimum) and the best Farley bound (below it) closes as columns enter, ever slower
    (tailing off): where even the pace of the last stretch, kept up, would not close it by the
    deadline, no dive follows, and where the LP's value also leaves room for one device more than
    the bound already proven at most, the LP's time is better spent by the searches for a packing."""

    def __init__(self, deadline: Deadline, proven: int):
        self.deadline, self.proven = deadline, proven
        self.started = timing.clock()
        self.judge_after = deadline.remaining() * PACE_MIN_SHARE
        self.samples: list[tuple[float, float]] = []  # (seconds since started, gap); gaps never rise
        self.gave_up = False

    def hopeless(self, now: float, value: float, farley: float) -> bool:
        """Records the gap at ``now``. True (and :attr:`gave_up`) once a third of the LP's time has
        passed, where its value leaves room for one device above ``proven`` at most and the gap,
        closing at its pace over the last half of the run, would stay open at the deadline."""
        elapsed, gap = now - self.started, value - farley
        self.samples.append((elapsed, gap))
        if elapsed < self.judge_after or math.ceil(value - ROUNDING_TOLERANCE) > self.proven + 1:
            return False
        then, gap_then = self.samples[bisect.bisect_left(self.samples, elapsed * (1 - PACE_WINDOW_SHARE), key=_first)]
        closed_per_second = (gap_then - gap) / (elapsed - then) if then < elapsed else 0.0
        # No progress at all over the window is no pace to judge by: a degenerate LP (csAA125_1)
        # can sit still for seconds and then converge.
        self.gave_up = closed_per_second > 0 and gap > closed_per_second * max(self.deadline.at - now, 0.0)
        return self.gave_up


def _first(sample: tuple[float, float]) -> float:
    return sample[0]


def declines(instance: Instance, objectives: Sequence[Objective]) -> str:
    """Why column generation cannot model this problem ("" when it can): it knows identical
    devices and capacity limits only. Any rule it does not know, including problem fields added
    after it was written, sends the problem to CP-SAT, which models them all."""
    problem, reasons = instance.problem, []
    if objectives[0] is Objective.MIN_COST and len(set(instance.cost.tolist())) > 1:
        reasons.append("devices of different costs")
    if len(np.unique(instance.capacity, axis=0)) > 1:
        reasons.append("devices of different sizes or limits")
    if (instance.replicas > 1).any():
        reasons.append("replicas")
    if not instance.allowed.all():
        reasons.append("pins")
    if instance.groups:
        reasons.append("anti-affinity")
    if instance.max_devices is not None:
        reasons.append("a fleet-size limit")
    distinct = len(np.unique(instance.demand, axis=0))
    if distinct > MAX_ITEM_TYPES:
        reasons.append(f"more than {MAX_ITEM_TYPES} distinct models within the time limit (the local search does better)")
    fields = {f.name: f for f in dataclasses.fields(problem)}
    for name in fields.keys() - MODELLED_FIELDS:
        if getattr(problem, name) != _default(fields[name]):
            reasons.append(f"{name.replace('_', ' ')} rules")
    if not reasons:
        return ""
    return f"no LP bound: column generation does not take {', '.join(dict.fromkeys(reasons))}"


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def item_types(instance: Instance) -> ItemTypes:
    """Only for problems :func:`declines` accepts."""
    demand, inverse, counts = np.unique(instance.demand, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    members = tuple(np.flatnonzero(inverse == t) for t in range(len(demand)))
    return ItemTypes(demand.astype(np.int64), counts.astype(np.int64), members, instance.capacity[0].copy())


class _Master:
    """The restricted master LP: one row per item type (covered at least ``residual`` times), one
    column per pattern, each costing one device."""

    def __init__(self, types: ItemTypes, columns: list[np.ndarray]):
        self.types = types
        # The raw binding: highspy.Highs prints a banner on stdout (which would corrupt `plan
        # --format json`) and routes every solver callback through Python.
        self.highs = _Highs()
        self.highs.setOptionValue("output_flag", False)
        self.highs.setOptionValue("presolve", "off")  # presolve would discard the warm basis
        # Which simplex re-solves from the last basis fastest depends on what changed since (solve).
        self._rows_changed = False
        inf = highspy.kHighsInf
        for count in types.counts:
            self.highs.addRow(float(count), inf, 0, np.array([], dtype=np.int32), np.array([], dtype=np.float64))
        self.exchanges = self._add_exchanges(types)
        self.columns: list[np.ndarray] = []
        self.known: set[bytes] = set()
        for column in columns:
            self.add(column)

    def _add_exchanges(self, types: ItemTypes) -> int:
        """Exchange columns (dual-optimal inequalities, Ben Amor, Desrosiers & Valério de Carvalho
        2006; Gschwind & Irnich 2016): with one resource a device's room for a model also holds
        any smaller one, so some optimal dual prices the smaller no higher. One free column per
        pair of types adjacent by size, covering the smaller with the larger's surplus, keeps the
        duals ordered: the LP converges in a fraction of the iterations where the models are many
        distinct sizes (Scholl's HARD, the GI set). Only for the root LP: the dive fixes patterns,
        and the columns go before it starts (:meth:`drop_exchanges`)."""
        if types.demand.shape[1] != 1 or len(types.counts) < 2:
            return 0
        by_size = np.argsort(-types.demand[:, 0], kind="stable").astype(np.int32)
        for larger, smaller in zip(by_size[:-1], by_size[1:]):
            rows = np.array([larger, smaller], dtype=np.int32)
            self.highs.addCol(0.0, 0.0, highspy.kHighsInf, 2, rows, np.array([-1.0, 1.0]))
        return len(by_size) - 1

    def drop_exchanges(self) -> None:
        if self.exchanges:
            self.highs.deleteCols(self.exchanges, np.arange(self.exchanges, dtype=np.int32))
            self.exchanges = 0

    def add(self, pattern: np.ndarray) -> bool:
        key = pattern.tobytes()
        if key in self.known:
            return False
        self.known.add(key)
        rows = np.flatnonzero(pattern).astype(np.int32)
        self.highs.addCol(1.0, 0.0, highspy.kHighsInf, len(rows), rows, pattern[rows].astype(np.float64))
        self.columns.append(pattern)
        return True

    def set_residual(self, residual: np.ndarray) -> None:
        rows = np.arange(len(residual), dtype=np.int32)
        upper = np.full(len(residual), highspy.kHighsInf)
        # One call for all rows (one per row took a tenth of a dive's time); highspy's stub lacks it.
        self.highs.changeRowsBounds(len(rows), rows, residual.astype(np.float64), upper)  # type: ignore[attr-defined]
        self._rows_changed = True

    def usage(self) -> np.ndarray:
        """Devices of each pattern in the LP's solution, indexed as :attr:`columns`."""
        return np.asarray(self.highs.getSolution().col_value)[self.exchanges :]

    def solve(self) -> tuple[float, np.ndarray]:
        """The LP's value and its row duals."""
        # Lowered row bounds (a dive's fixing) keep the basis dual feasible: dual simplex re-solves
        # in half the time primal takes (Hard28). An added column keeps it primal feasible, and
        # most solves follow one: choosing by what changed took a third less LP time than dual
        # simplex throughout over the root LPs and plain dives of five Hard28 instances, a
        # Falkenauer triplet and an AI instance (4.3 s against 6.5 s, and 5.4 against 8.4).
        self.highs.setOptionValue("simplex_strategy", DUAL_SIMPLEX if self._rows_changed else PRIMAL_SIMPLEX)
        self._rows_changed = False
        self.highs.run()
        solution = self.highs.getSolution()
        value = self.highs.getInfo().objective_function_value
        return value, np.maximum(np.asarray(solution.row_dual), 0.0)


class ColumnGeneration:
    """One instance's master LP through the phases the solver interleaves with its own searches:
    the root LP (the bound), a plain dive (quick), then the backtracking search and the integer
    programme over the pool (slow, for the last device). The solver runs its search on fewer
    devices from the plain dive's packing between them: from the LP's nearly full patterns it
    reaches the bound at once where the backtracking search takes seconds or never does (Scholl's
    N4W2B1R1)."""

    def __init__(self, instance: Instance, seed: Assignment | None):
        """``seed``'s devices become the first columns."""
        self.types = item_types(instance)
        self.master = _Master(self.types, _initial_columns(instance, self.types, seed))
        self.lp_bound = 0

    def root(self, deadline: Deadline, incumbent_devices: int | None = None, proven: int = 0) -> RootLP:
        """The LP bound: it stops as soon as its rounded-up value can no longer change or reaches
        ``incumbent_devices``, at ``deadline``, or where it can raise the bound already ``proven``
        by one device at most and would not converge by the deadline (:class:`Pace`). A dive through a root LP stopped far from its
        optimum fixes the wrong patterns, so the solver dives only where it converged."""
        counts = self.types.counts
        pace = Pace(deadline, proven)
        value, bound, converged = _generate(self.master, counts.copy(), deadline, settle_early=True,
                                            stop_at=incumbent_devices, pace=pace)
        self.lp_bound = max(bound, 1) if counts.sum() else 0
        self.master.drop_exchanges()
        return RootLP(self.lp_bound, value, converged, len(self.master.columns), pace.gave_up)

    def plain_dive(self, deadline: Deadline) -> Assignment:
        """Every model placed: the LP's patterns fixed without backtracking, and first fit for
        what the deadline leaves."""
        fixed, rest = plain_dive(self.master, self.types.counts.copy(), deadline, self._bound(deadline))
        return _to_assignment(self.types, fixed + _first_fit(self.types, rest) if rest.any() else fixed)

    def search(self, deadline: Deadline, fewer_than: int) -> Assignment | None:
        """A packing on the LP bound's count by limited discrepancy search, with the integer
        programme over the patterns it prices running beside it (pool_mip.py) until either
        reaches the bound; else the programme's best on fewer than ``fewer_than`` devices, or
        None."""
        counts = self.types.counts
        pool = PoolSearch(self.master.columns, counts, fewer_than, self.lp_bound, deadline)
        try:
            found = discrepancy_dive(self.master, counts, deadline, self._bound(deadline), self.lp_bound,
                                     pool.reached_target)
        finally:
            from_pool = pool.stop()
        if found is None:
            found = from_pool
        return None if found is None else _to_assignment(self.types, found)

    def _bound(self, deadline: Deadline) -> Bound:
        master = self.master

        def bound(rest: np.ndarray, room: int | None) -> int:
            master.set_residual(rest)
            # The plain dive (room None) stops each LP as soon as its rounded bound settles: it is
            # the fallback, and quick. The search solves each LP to optimality unless its bound
            # already exceeds the room: a solution stopped early misleads it (measured on Hard28).
            if room is None:
                return _generate(master, rest, deadline, settle_early=True)[1]
            return _generate(master, rest, deadline, stop_at=room + 1)[1]

        return bound


def _generate(
    master: _Master, residual: np.ndarray, deadline: Deadline, settle_early: bool = False, stop_at: int | None = None,
    pace: Pace | None = None,
) -> tuple[float, int, bool]:
    """Price columns into the master until the LP is optimal, its bound reaches ``stop_at``,
    (with ``settle_early``) its rounded bound can no longer change, or (with ``pace``) it cannot
    converge by the deadline.

    Prices are smoothed towards the best dual seen so far (Wentges 1997): plain duals jump between
    extreme points and cost several times the iterations. Every price vector priced gives a valid
    bound (covered counts at those prices, over the best pattern's worth). Returns the LP value,
    the best bound rounded up, and whether the LP converged.
    """
    types, best_bound, center, center_bound = master.types, 0, None, 0.0
    limits = np.minimum(residual, _fit_alone(types))
    wanted = 1.0 + REDUCED_COST_TOLERANCE
    while True:
        value, duals = master.solve()
        prices = duals if center is None else SMOOTHING * center + (1 - SMOOTHING) * duals
        while True:
            priced = best_pattern(types.demand, prices, limits, types.capacity, deadline.remaining(), wanted)
            if math.isfinite(priced.bound) and priced.bound > 0:
                bound = float(residual @ prices) / priced.bound
                if bound > center_bound:
                    center, center_bound = prices, bound
                best_bound = max(best_bound, math.ceil(bound - ROUNDING_TOLERANCE))
            gain = float(duals @ priced.pattern)
            if gain > wanted or prices is duals:
                break
            prices = duals  # smoothed prices found nothing the LP lacks: price at its own duals
        if gain <= wanted and priced.bound <= wanted:
            return value, max(best_bound, math.ceil(value - ROUNDING_TOLERANCE)), True
        settled = best_bound >= math.ceil(value - ROUNDING_TOLERANCE)
        reached = stop_at is not None and best_bound >= stop_at
        if (settle_early and settled) or reached or deadline.passed() or gain <= wanted:
            return value, best_bound, settled
        if pace is not None and pace.hopeless(timing.clock(), value, center_bound):
            return value, best_bound, False
        if not master.add(priced.pattern):
            # The pricing's rounded prices found a column already in: the LP is optimal to within them.
            return value, max(best_bound, math.ceil(value - ROUNDING_TOLERANCE)), True


def _first_fit(types: ItemTypes, residual: np.ndarray) -> list[np.ndarray]:
    """What the deadline leaves unplaced, biggest type first, each on the first device with room."""
    order = np.argsort(-(types.demand / np.maximum(types.capacity, 1)).max(axis=1), kind="stable")
    total = int(residual.sum())
    patterns = np.zeros((total, len(residual)), dtype=np.int64)
    rooms = np.tile(types.capacity, (total, 1))
    opened = 0
    for t in order:
        for _ in range(int(residual[t])):
            fits = np.flatnonzero(np.all(rooms[:opened] >= types.demand[t], axis=1))
            k = int(fits[0]) if len(fits) else opened
            opened = max(opened, k + 1)
            patterns[k, t] += 1
            rooms[k] -= types.demand[t]
    return list(patterns[:opened])


def _fit_alone(types: ItemTypes) -> np.ndarray:
    """How many of each type one device holds, by its tightest resource."""
    with np.errstate(divide="ignore"):
        per_resource = np.where(types.demand > 0, types.capacity // np.maximum(types.demand, 1), np.iinfo(np.int64).max)
    return per_resource.min(axis=1)


def _initial_columns(instance: Instance, types: ItemTypes, seed: Assignment | None) -> list[np.ndarray]:
    """One column per type (as many as fit alone), which keeps the master feasible, plus the seed's devices."""
    limits = np.minimum(types.counts, _fit_alone(types))
    columns = [np.where(np.arange(len(types.counts)) == t, limits[t], 0).astype(np.int64) for t in range(len(limits))]
    if seed is not None:
        type_of = np.empty(instance.n_models, dtype=np.int64)
        for t, members in enumerate(types.members):
            type_of[members] = t
        by_device: dict[int, np.ndarray] = {}
        for i, devices in seed.items():
            for d in devices:
                by_device.setdefault(d, np.zeros(len(types.counts), dtype=np.int64))[type_of[i]] += 1
        columns += list(by_device.values())
    return columns


def _to_assignment(types: ItemTypes, patterns: list[np.ndarray]) -> Assignment:
    """Patterns to models on devices 0, 1, ... (the devices are interchangeable)."""
    queues = [list(members) for members in types.members]
    assignment: Assignment = {}
    for device, pattern in enumerate(patterns):
        for t in np.flatnonzero(pattern):
            for _ in range(int(pattern[t])):
                assignment[int(queues[t].pop())] = [device]
    return assignment
