"""Placement: a portfolio of heuristic, column generation, local search and CP-SAT, within one
time budget, and a proof status for the device count it returns.

First-fit-decreasing gives a placement at once, and the combinatorial bounds (bounds.py) often
prove it. When they do not and the problem is plain packing on identical devices, column
generation (colgen.py) computes the LP bound, which proves the optimum on nearly every classic
instance, and dives through the LP to a placement that usually meets it. Where the dive stops
above the bound, a search for a packing on fewer devices (fixed_count.py) steps down towards it,
and a local search then closes devices one at a time, stopping at the bound. Once the device count
is proven, CP-SAT only optimises the remaining objectives (headroom, moves) on that many devices;
otherwise small and medium fleets go to CP-SAT for the rest of the time, hinted by the best
placement so far. Fleets too large for the exact model get the best placement found with the bound
beside it, so the gap is always visible. Problems with rules column generation does not model
(pins, anti-affinity, replicas, a fleet-size limit, devices of different sizes, forbidden groups) go
the CP-SAT way, and the proof says so: its no-good cuts keep each forbidden group off any one device,
first fit skips a device that would complete a group, and the local search leaves their members where
they are. The placement returned is checked against the forbidden groups as against the limits.

:func:`solve` runs these as steps in that order, each offering a placement on fewer devices than
the best so far, on one deadline whose shares the constants below set. Every step works on one
integer form of the problem (instance.py), each resource in the coarsest unit with the same
packings (resolution.py), so that sizes in MiB or in bytes get the answer small integers get; the
placement returned is checked against every limit in exact units once more.

``Strategy.CLASSIC`` is the solver as it was before column generation, kept so that benchmarks
measure the portfolio against it in the same run.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeGuard

from gpupack import timing
from gpupack.scheduler.packing.bounds import device_lower_bound
from gpupack.scheduler.packing.colgen import ColumnGeneration, declines
from gpupack.scheduler.packing.explain import explain_infeasible, explain_unsolved
from gpupack.scheduler.packing.fixed_count import pack_fewer, searchable
from gpupack.scheduler.packing.heuristic import Assignment, best_heuristic, keep_current
from gpupack.scheduler.packing.instance import Instance, compile_problem, device_totals, overfilled, together
from gpupack.scheduler.packing.local_search import reduce_devices
from gpupack.scheduler.packing.problem import (
    DeviceCountProof,
    InfeasibleError,
    Objective,
    PlacementProblem,
    PlacementResult,
    ProofStatus,
)
from gpupack.timing import Deadline

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
# after it found no Hard28 packing the dive had missed; the quick local search before the LP only
# delays the dive there (on Hard28 it never reaches the LP bound). With 0.95 and 0.02 in place of
# 0.85 and 0.1 the dive starts sooner and runs longer: 26 and 25 of Hard28 at their optimum in
# 8.5 s in-process, against 25, 22 and 21 (load 1.5 to 4 on two cores), and the other 54 classic
# instances but the AI set all at theirs save csBB500_1, which misses or not by the load either way.
COLGEN_SHARE_ONE_RESOURCE = 0.95
QUICK_SEARCH_SHARE_ONE_RESOURCE = 0.02
# The root LP's own limit, a share of the budget left when it starts. Where it has not converged
# by then (csBB500's 5,331 models, the AI set: 8 s and more) no dive follows, and the search on
# fewer devices, which packs csBB500_1 on its optimum in 3 s, gets the rest; where its pace says it
# will not converge by then and it could raise the bound by one device at most, it gives up sooner
# (colgen.Pace), csBB500_1's after about 2 s. `--command --only csBB500_1`, load 1.4 to 1.9: 1821
# in 6 of 6 columns (two runs) with this and the share below, 1 of 6 before.
ROOT_SHARE = 0.4
QUICK_SEARCH_SHARE = 0.1
# The search on fewer devices from the plain dive's packing, before the backtracking search: on
# Scholl's N4W2B1R1 it reaches the bound in a hundredth of a second, where the backtracking search
# and the pool's integer programme find nothing in 7 s; where it does not, it costs little.
QUICK_FIXED_COUNT_SHARE = 0.05
FIXED_COUNT_SHARE = 0.6
# Where the root LP gave up on its pace (colgen.Pace), the search on fewer devices gets all that is
# left: on csBB500_1 it reached 1821 in 3 of 3 in-process runs at 7.5 s with all, 0 of 3 with 0.6
# (the local search after it found nothing there in any run; load about 1.9).
FIXED_COUNT_SHARE_AFTER_HOPELESS_ROOT = 1.0
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


class _Budget:
    """The time limit as one deadline, and the one place where each phase's time is recorded."""

    def __init__(self, time_limit_seconds: float):
        self.started = timing.clock()
        self.deadline = Deadline(self.started + time_limit_seconds)
        self.seconds_by_phase: dict[str, float] = {}

    def share(self, ratio: float) -> Deadline:
        return self.deadline.share(ratio)

    def remaining(self) -> float:
        return self.deadline.remaining()

    def elapsed(self) -> float:
        return timing.clock() - self.started

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begun = timing.clock()
        try:
            yield
        finally:
            self.seconds_by_phase[name] = self.seconds_by_phase.get(name, 0.0) + timing.clock() - begun


def solve(
    problem: PlacementProblem,
    objectives: Sequence[Objective] = (Objective.MIN_DEVICES,),
    time_limit_seconds: float = 10.0,
    strategy: Strategy = Strategy.PORTFOLIO,
) -> PlacementResult:
    """The best placement for ``objectives`` (applied lexicographically) found within the time limit.

    Raises :class:`InfeasibleError` naming the models and policies when no placement exists.
    """
    budget = _Budget(time_limit_seconds)
    objectives = tuple(dict.fromkeys(objectives)) or (Objective.MIN_DEVICES,)
    run = _Portfolio(problem, objectives, strategy, budget)
    run.first_fit()
    run.quick_local_search()
    run.column_generation()
    run.fixed_count_search()
    exact = run.exact_model_fits()
    run.local_search(leave_time_for_cp_sat=exact)
    run.cp_sat(exact)
    return run.result()


class _Portfolio:
    """One solve, step by step: the best placement so far, which each step replaces when it finds
    one on fewer devices, and the proven lower bound on devices with where it comes from."""

    def __init__(self, problem: PlacementProblem, objectives: tuple[Objective, ...], strategy: Strategy,
                 budget: _Budget):
        self.problem, self.objectives, self.strategy, self.budget = problem, objectives, strategy, budget
        self.primary = objectives[0]
        with budget.phase("bounds"):
            self.instance = compile_problem(problem)
            self.bound, self.source = device_lower_bound(self.instance), "combinatorial"
            reason = explain_infeasible(self.instance, self.bound)
        if reason:
            raise InfeasibleError(reason)
        self.best: Assignment | None = None
        self.method = "first-fit-decreasing"
        self.optimal = False
        self.note = ""  # why the device count may stay unproven
        self.priced = False  # column generation runs (or ran): the LP bound and its searches apply
        self.root_gave_up = False  # its root LP stopped on its pace: the search on fewer devices gets the rest

    def first_fit(self) -> None:
        with self.budget.phase("first-fit-decreasing"):
            keep = [keep_current(self.instance)] if self.instance.current else []
            self.best = best_heuristic(self.instance, keep, self.budget.share(HEURISTIC_SHARE))
        if self.strategy is Strategy.PORTFOLIO:
            self.note = declines(self.instance, self.objectives)
        else:
            self.note = "classic strategy: no LP bound"
        self.priced = self._above_bound(self.best) and self.primary in COUNTING and not self.note

    def quick_local_search(self) -> None:
        """A short local search first: on fleets it often reaches the combinatorial bound at once."""
        best = self.best
        if not self.priced or best is None:
            return
        one_resource = self.instance.demand.shape[1] == 1
        deadline = self.budget.share(QUICK_SEARCH_SHARE_ONE_RESOURCE if one_resource else QUICK_SEARCH_SHARE)
        patience_seconds = deadline.remaining() / 2
        self._offer("local-search", lambda: reduce_devices(self.instance, best, self.bound, deadline, patience_seconds))
        self.priced = self._above_bound(self.best)

    def column_generation(self) -> None:
        """The LP bound; where the LP converged, a plain dive through it, the search on fewer devices
        from the dive's packing, and the backtracking search, while the count is above the bound."""
        best = self.best
        if not self.priced or best is None:
            return
        if self.budget.remaining() < COLGEN_MIN_SECONDS:
            # Thousands of models: first fit alone can take most of a short budget.
            self.note = f"column generation skipped: first fit left {self.budget.remaining():.1f} s of the time limit"
            self.priced = False
            return
        dives_until = self.budget.share(_colgen_share(self.instance))
        root_until = self.budget.share(ROOT_SHARE)
        with self.budget.phase("column-generation"):
            lp = ColumnGeneration(self.instance, best)
            root = lp.root(root_until, _devices(best), self.bound)
        self._raise_bound(root.lp_bound, "lp")
        self.root_gave_up = root.hopeless
        if not root.converged:
            why = ("at its pace it would not converge within" if root.hopeless else "its root LP may take")
            self.note = (f"column generation stopped before the LP converged: {why} "
                         f"{ROOT_SHARE:.0%} of the time limit, and the search on fewer devices gets the rest")
            return
        if not self._above_bound(self.best):
            return
        dived = self._offer("column-generation", lambda: lp.plain_dive(dives_until))
        if (dived is not None and self._above_bound(self.best) and searchable(self.instance, self.bound)
                and _devices(dived) <= self.instance.n_devices):
            # From the plain dive's packing even where the local search's has fewer devices:
            # the dive's devices are the LP's patterns, nearly full where the bound needs them full.
            deadline = self.budget.share(QUICK_FIXED_COUNT_SHARE)
            self._offer("fixed-count-search", lambda: pack_fewer(self.instance, dived, self.bound, deadline))
        incumbent = self.best
        if incumbent is not None and self._above_bound(incumbent):
            self._offer("column-generation", lambda: lp.search(dives_until, _devices(incumbent)))

    def fixed_count_search(self) -> None:
        """The bound is proven; what is missing is a packing on fewer devices, down to that many."""
        best = self.best
        if not self.priced or best is None or not self._above_bound(best) or not searchable(self.instance, self.bound):
            return
        deadline = self.budget.share(FIXED_COUNT_SHARE_AFTER_HOPELESS_ROOT if self.root_gave_up else FIXED_COUNT_SHARE)
        self._offer("fixed-count-search", lambda: pack_fewer(self.instance, best, self.bound, deadline))

    def exact_model_fits(self) -> bool:
        """Whether the CP-SAT model, trimmed to the best placement so far, is small enough to build.
        Where column generation ran, a CP-SAT search for the count rarely beats it, and building
        the model for a large fleet alone can outlast the budget."""
        most = COUNT_BY_CP_SAT_MAX_PAIRS if self.priced else EXACT_MAX_PAIRS
        return _pairs(self.instance, self.best, self.primary) <= most

    def local_search(self, leave_time_for_cp_sat: bool) -> None:
        best = self.best
        if best is None or not self._above_bound(best) or self.primary not in COUNTING:
            return
        remaining = self.budget.remaining()
        deadline = self.budget.share(SEARCH_SHARE if leave_time_for_cp_sat else 1.0)
        patience_seconds = remaining * PATIENCE_SHARE if leave_time_for_cp_sat else math.inf
        self._offer("local-search", lambda: reduce_devices(self.instance, best, self.bound, deadline, patience_seconds))

    def cp_sat(self, exact: bool) -> None:
        """With the count proven, CP-SAT only has the later objectives left, on that many devices;
        otherwise, where the model is small enough, every objective."""
        best = self.best
        count_proven = best is not None and _devices(best) == self.bound and self.primary in COUNTING
        if count_proven and self.objectives == (Objective.MIN_DEVICES,):
            self.optimal = True
            return
        if not exact and not (count_proven and self.strategy is Strategy.PORTFOLIO):
            return
        instance = self.instance
        pinned = self.strategy is Strategy.PORTFOLIO and count_proven and self.primary is Objective.MIN_DEVICES
        rest = self.objectives[1:] if pinned else self.objectives
        target = dataclasses.replace(instance, max_devices=self.bound) if pinned else instance
        pairs = instance.n_models * self.bound if pinned else _pairs(instance, best, self.primary)
        affordable = self.strategy is Strategy.CLASSIC or pairs * BUILD_SECONDS_PER_PAIR < self.budget.remaining() / 2
        if not rest or not affordable or pairs > EXACT_MAX_PAIRS:
            return
        # CP-SAT imports pandas, most of a second: plans that never reach this line do not pay it.
        from gpupack.scheduler.packing.cpsat import solve_exact

        with self.budget.phase("cp-sat"):
            outcome = solve_exact(target, rest, max(self.budget.remaining(), 0.1), best)
        if outcome.infeasible:
            raise InfeasibleError(explain_unsolved(instance, proven=True))
        if outcome.assignment is not None:
            self.best, self.optimal = outcome.assignment, outcome.proven
            self.method = "cp-sat" if self.method == "first-fit-decreasing" or not pinned else f"{self.method}+cp-sat"
        self._raise_bound(outcome.device_bound, "cp-sat")

    def result(self) -> PlacementResult:
        best, instance, problem = self.best, self.instance, self.problem
        if best is None or not _within_max_devices(instance, best):
            raise InfeasibleError(explain_unsolved(instance, proven=False))
        over = overfilled(instance, best)
        if over:
            # The solving units have the same packings as bytes (resolution.py): this is a bug.
            raise RuntimeError(f"placement exceeds a limit of {', '.join(over)} in exact units; please report it")
        rejoined = together(instance, best)
        if rejoined:
            raise RuntimeError(f"placement puts a forbidden group together on {', '.join(rejoined)}; please report it")
        count = _devices(best)
        placement = instance.placement(best)
        return PlacementResult(
            placement=placement,
            device_totals=device_totals(problem, placement),
            device_count=count,
            lower_bound=self.bound,
            optimal=self.optimal or (self.objectives == (Objective.MIN_DEVICES,) and count == self.bound),
            solve_seconds=self.budget.elapsed(),
            method=self.method,
            moves=len(placement.pairs() - problem.current.pairs()) if problem.current is not None else None,
            proof=_proof(self.primary, count, self.bound, self.source, self.note),
            seconds_by_phase=self.budget.seconds_by_phase,
        )

    def _offer(self, method: str, search: Callable[[], Assignment | None]) -> Assignment | None:
        """Run ``search`` as the phase ``method``; what it finds becomes the best placement when it
        uses fewer devices. Returns what it found either way."""
        with self.budget.phase(method):
            found = search()
        if self.best is not None and _fewer(found, self.best, self.instance):
            self.best, self.method = found, method
        return found

    def _above_bound(self, assignment: Assignment | None) -> bool:
        return assignment is not None and _devices(assignment) > self.bound

    def _raise_bound(self, bound: int, source: str) -> None:
        if bound > self.bound:
            self.bound, self.source = bound, source


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
