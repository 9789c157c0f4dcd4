"""Placement: a portfolio of heuristic, column generation, local search and CP-SAT, within one
time budget, and a proof status for the device count it returns.

First-fit-decreasing gives a placement at once, and the combinatorial bounds (bounds.py) often
prove it. When they do not and the problem is plain packing on identical devices, column
generation (colgen.py) computes the LP bound, which proves the optimum on nearly every classic
instance, and dives through the LP to a placement that usually meets it. Where the dive stops
above the bound, a search for a packing on fewer devices (fixed_count.py) steps down towards it,
and a local search then closes devices one at a time, stopping at the bound. Once the device count is proven, CP-SAT only
optimises the remaining objectives (headroom, moves) on that many devices; otherwise small and
medium fleets go to CP-SAT for the rest of the time, hinted by the best placement so far. Fleets
too large for the exact model get the best placement found with the bound beside it, so the gap is
always visible. Problems with rules column generation does not model (pins, anti-affinity,
replicas, a fleet-size limit, devices of different sizes) go the CP-SAT way, and the proof says so.

``Strategy.CLASSIC`` is the solver as it was before column generation, kept so that benchmarks
measure the portfolio against it in the same run.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from typing import Iterator, Sequence, TypeGuard
from contextlib import contextmanager

from gpupack.scheduler.bounds import device_lower_bound
from gpupack.scheduler.colgen import ColumnGeneration, declines
from gpupack.scheduler.constraints import explain_infeasible, explain_unsolved
from gpupack.scheduler.fixed_count import pack_fewer, searchable
from gpupack.scheduler.heuristic import Assignment, best_heuristic, keep_current
from gpupack.scheduler.instance import Instance, compile_problem, device_totals
from gpupack.scheduler.local_search import reduce_devices
from gpupack.scheduler.problem import (
    DeviceCountProof,
    InfeasibleError,
    Objective,
    PlacementProblem,
    PlacementResult,
    ProofStatus,
)

__all__ = ["InfeasibleError", "Objective", "PlacementProblem", "PlacementResult", "Strategy", "solve"]

# Above this many (model, device) decisions the exact model takes longer to build than it helps.
EXACT_MAX_PAIRS = 60_000
# When CP-SAT follows, the local search gets at most SEARCH_SHARE of the time, and gives up after
# PATIENCE_SHARE of it without progress: on small fleets CP-SAT then often proves the optimum.
SEARCH_SHARE = 0.5
PATIENCE_SHARE = 0.2
# The budget after first fit, in order: a quick local search (QUICK_SEARCH_SHARE at most), column
# generation and its dive (COLGEN_SHARE of what is left), the search on fewer devices
# (FIXED_COUNT_SHARE of what the dive leaves), a second local search (the rest). Measured on the
# Falkenauer triplets, Hard28, Scholl_2, GI and AI misses at 10 s on a loaded machine: 0.7 / 0.6
# hit 10 of 17, 0.5 / 0.8 only 7 (the search starts better from a longer dive), and the second
# local search still closes the last device of some Scholl_2 instances. `bench/placement.py
# --shares` tries others.
COLGEN_SHARE = 0.7
# With one resource the backtracking dive (dive.py) finds most of what is found, and the search
# after it found no Hard28 packing the dive had missed: at 0.95 the dive found two more (loaded
# machine). The search keeps a share for what an early-stopped LP leaves (csBB500).
COLGEN_SHARE_ONE_RESOURCE = 0.85
# The root LP's own limit, a share of the budget left when it starts. Where it has not converged
# by then (csBB500's 5,331 models, the AI set: 8 s and more) no dive follows, and the search on
# fewer devices, which packs csBB500_1 on its optimum in 3 s, gets the rest.
ROOT_SHARE = 0.4
QUICK_SEARCH_SHARE = 0.1
# The search on fewer devices from the plain dive's packing, before the backtracking search: on
# Scholl's N4W2B1R1 it reaches the bound in a hundredth of a second, where the backtracking search
# and the pool's integer programme find nothing in 7 s; where it does not, it costs little.
QUICK_FIXED_COUNT_SHARE = 0.05
FIXED_COUNT_SHARE = 0.6
COLGEN_MIN_SECONDS = 0.5  # building the master of thousands of models alone takes a few tenths
COUNTING = (Objective.MIN_DEVICES, Objective.MIN_COST)
# A second first-fit-decreasing order starts only within this share of the time limit.
HEURISTIC_SHARE = 0.1
# Where column generation applies, CP-SAT still searches the count of small fleets (it proves them
# at once); building its model costs about BUILD_SECONDS_PER_PAIR, which must fit what is left.
COUNT_BY_CP_SAT_MAX_PAIRS = 5_000
BUILD_SECONDS_PER_PAIR = 4e-5


class Strategy(str, enum.Enum):
    PORTFOLIO = "portfolio"
    CLASSIC = "classic"  # heuristic, local search, CP-SAT: no LP bound, no separate count proof


class _Clock:
    """The budget's deadline, and how long each phase took."""

    def __init__(self, time_limit_seconds: float):
        self.started = time.perf_counter()
        self.deadline = self.started + time_limit_seconds
        self.seconds_by_phase: dict[str, float] = {}

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.seconds_by_phase[name] = self.seconds_by_phase.get(name, 0.0) + time.perf_counter() - begun


def solve(
    problem: PlacementProblem,
    objectives: Sequence[Objective] = (Objective.MIN_DEVICES,),
    time_limit_seconds: float = 10.0,
    strategy: Strategy = Strategy.PORTFOLIO,
) -> PlacementResult:
    """The best placement for ``objectives`` (applied lexicographically) found within the time limit.

    Raises :class:`InfeasibleError` naming the models and policies when no placement exists.
    """
    clock = _Clock(time_limit_seconds)
    objectives = tuple(dict.fromkeys(objectives)) or (Objective.MIN_DEVICES,)
    primary = objectives[0]
    with clock.phase("bounds"):
        instance = compile_problem(problem)
        bound, source = device_lower_bound(instance), "combinatorial"
        reason = explain_infeasible(instance, bound)
    if reason:
        raise InfeasibleError(reason)
    with clock.phase("first-fit-decreasing"):
        keep = [keep_current(instance)] if instance.current else []
        hint = best_heuristic(instance, keep, time.perf_counter() + clock.remaining() * HEURISTIC_SHARE)
    assignment, method, optimal = hint, "first-fit-decreasing", False
    note = declines(instance, objectives) if strategy is Strategy.PORTFOLIO else "classic strategy: no LP bound"
    priced = hint is not None and _devices(hint) > bound and primary in COUNTING and not note
    if priced and hint is not None:
        # A short local search first: on fleets it often reaches the combinatorial bound at once.
        remaining = clock.remaining()
        with clock.phase("local-search"):
            searched = reduce_devices(
                instance, hint, bound, time.perf_counter() + remaining * QUICK_SEARCH_SHARE,
                remaining * QUICK_SEARCH_SHARE / 2,
            )
        if _devices(searched) < _devices(hint):
            hint, assignment, method = searched, searched, "local-search"
        priced = _devices(hint) > bound
    if priced and clock.remaining() < COLGEN_MIN_SECONDS:
        # Thousands of models: first fit alone can take most of a short budget.
        note = f"column generation skipped: first fit left {max(clock.remaining(), 0):.1f} s of the time limit"
        priced = False
    if priced and hint is not None:
        remaining = clock.remaining()
        colgen_deadline = time.monotonic() + remaining * _colgen_share(instance)

        with clock.phase("column-generation"):
            lp = ColumnGeneration(instance, hint)
            root = lp.root(time.monotonic() + remaining * ROOT_SHARE, _devices(hint))
        if root.lp_bound > bound:
            bound, source = root.lp_bound, "lp"
        if not root.converged:
            note = (f"column generation stopped before the LP converged: its root LP may take "
                    f"{ROOT_SHARE:.0%} of the time limit, and the search on fewer devices the rest")
        if root.converged and _devices(hint) > bound:
            with clock.phase("column-generation"):
                dived = lp.plain_dive(colgen_deadline)
            if _fewer(dived, hint, instance):
                hint, assignment, method = dived, dived, "column-generation"
            if _devices(hint) > bound and searchable(instance, bound) and _devices(dived) <= instance.n_devices:
                # From the plain dive's packing even where the local search's has fewer devices:
                # the dive's devices are the LP's patterns, nearly full where the bound needs them full.
                with clock.phase("fixed-count-search"):
                    packed = pack_fewer(instance, dived, bound, time.perf_counter() + clock.remaining() * QUICK_FIXED_COUNT_SHARE)
                if _fewer(packed, hint, instance):
                    hint, assignment, method = packed, packed, "fixed-count-search"
            if _devices(hint) > bound:
                with clock.phase("column-generation"):
                    found = lp.search(colgen_deadline, _devices(hint))
                if _fewer(found, hint, instance):
                    hint, assignment, method = found, found, "column-generation"
    if priced and hint is not None and _devices(hint) > bound and searchable(instance, bound):
        # The bound is proven; what is missing is a packing on fewer devices, down to that many.
        with clock.phase("fixed-count-search"):
            packed = pack_fewer(instance, hint, bound, time.perf_counter() + clock.remaining() * FIXED_COUNT_SHARE)
        if packed is not None:
            hint, assignment, method = packed, packed, "fixed-count-search"
    exact = _pairs(instance, hint, primary) <= EXACT_MAX_PAIRS
    if priced and hint is not None:
        # Column generation ran: a CP-SAT search for the count rarely beats it, and building the
        # model for a large fleet alone can outlast the budget.
        exact = _pairs(instance, hint, primary) <= COUNT_BY_CP_SAT_MAX_PAIRS
    if hint is not None and _devices(hint) > bound and primary in COUNTING:
        remaining = clock.remaining()
        deadline = time.perf_counter() + remaining * (SEARCH_SHARE if exact else 1.0)
        patience = remaining * PATIENCE_SHARE if exact else math.inf
        with clock.phase("local-search"):
            searched = reduce_devices(instance, hint, bound, deadline, patience)
        if _devices(searched) < _devices(hint):
            hint, assignment, method = searched, searched, "local-search"
    count_proven = hint is not None and _devices(hint) == bound and primary in COUNTING
    if count_proven and objectives == (Objective.MIN_DEVICES,):
        optimal = True
    elif exact or (count_proven and strategy is Strategy.PORTFOLIO):
        # With the count proven, CP-SAT only has the later objectives left, on that many devices.
        pinned = strategy is Strategy.PORTFOLIO and count_proven and primary is Objective.MIN_DEVICES
        rest = objectives[1:] if pinned else objectives
        target = dataclasses.replace(instance, max_devices=bound) if pinned else instance
        pairs = instance.n_models * bound if pinned else _pairs(instance, hint, primary)
        affordable = strategy is Strategy.CLASSIC or pairs * BUILD_SECONDS_PER_PAIR < clock.remaining() / 2
        if rest and affordable and pairs <= EXACT_MAX_PAIRS:
            # CP-SAT imports pandas, most of a second: plans that never reach this line do not pay it.
            from gpupack.scheduler.cpsat import solve_exact

            with clock.phase("cp-sat"):
                outcome_cp = solve_exact(target, rest, max(clock.remaining(), 0.1), hint)
            if outcome_cp.infeasible:
                raise InfeasibleError(explain_unsolved(instance, proven=True))
            if outcome_cp.assignment is not None:
                assignment, optimal = outcome_cp.assignment, outcome_cp.proven
                method = "cp-sat" if method == "first-fit-decreasing" or not pinned else f"{method}+cp-sat"
            if outcome_cp.device_bound > bound:
                bound, source = outcome_cp.device_bound, "cp-sat"
    if assignment is None or not _within_max_devices(instance, assignment):
        raise InfeasibleError(explain_unsolved(instance, proven=False))
    if objectives == (Objective.MIN_DEVICES,) and _devices(assignment) == bound:
        optimal = True
    placement = instance.placement(assignment)
    return PlacementResult(
        placement=placement,
        device_totals=device_totals(problem, placement),
        device_count=_devices(assignment),
        lower_bound=bound,
        optimal=optimal,
        solve_seconds=time.perf_counter() - clock.started,
        method=method,
        moves=len(placement.pairs() - problem.current.pairs()) if problem.current is not None else None,
        proof=_proof(primary, _devices(assignment), bound, source, note),
        seconds_by_phase=clock.seconds_by_phase,
    )


def _proof(primary: Objective, count: int, bound: int, source: str, note: str) -> DeviceCountProof:
    if primary not in COUNTING:
        why = f"{primary.value} comes first, so the device count is not minimised"
        return DeviceCountProof(ProofStatus.NOT_ATTEMPTED, count, bound, source, why)
    if count <= bound:
        return DeviceCountProof(ProofStatus.OPTIMAL, count, bound, source)
    return DeviceCountProof(ProofStatus.GAP, count, bound, source, note)


def _colgen_share(instance: Instance) -> float:
    return COLGEN_SHARE_ONE_RESOURCE if instance.demand.shape[1] == 1 else COLGEN_SHARE


def _fewer(found: Assignment | None, incumbent: Assignment, instance: Instance) -> TypeGuard[Assignment]:
    return found is not None and _devices(found) < _devices(incumbent) and _devices(found) <= instance.n_devices


def _devices(assignment: Assignment) -> int:
    return len({d for ds in assignment.values() for d in ds})


def _pairs(instance: Instance, hint: Assignment | None, primary: Objective) -> int:
    """How many (model, device) decisions the exact model will have, once trimmed to the hint."""
    if hint is None or primary not in COUNTING:
        return instance.n_models * instance.n_devices
    return instance.n_models * min(instance.n_devices, _devices(hint))


def _within_max_devices(instance: Instance, assignment: Assignment) -> bool:
    limit = instance.problem.max_devices
    return limit is None or _devices(assignment) <= limit
