"""Placement: heuristic first, a lower bound to prove it, then local search and CP-SAT when the
bound does not.

When fewest devices (or least cost) come first, a local search closes devices one at a time,
stopping at the lower bound; it finds far better packings than CP-SAT on hard fleets within the
same time. Small and medium fleets then go to CP-SAT for the rest of the time (hinted by the best
placement so far, so a timeout never loses it); the search stops early when it stalls, since on
small fleets CP-SAT then often proves the optimum. Fleets too large for the exact model get the
search's placement with the bound beside it, so the gap is always visible.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

from gpupack.scheduler.bounds import device_lower_bound
from gpupack.scheduler.constraints import explain_infeasible, explain_unsolved
from gpupack.scheduler.cpsat import solve_exact
from gpupack.scheduler.heuristic import Assignment, best_heuristic, keep_current
from gpupack.scheduler.instance import Instance, compile_problem, device_totals
from gpupack.scheduler.local_search import reduce_devices
from gpupack.scheduler.problem import InfeasibleError, Objective, PlacementProblem, PlacementResult

__all__ = ["InfeasibleError", "Objective", "PlacementProblem", "PlacementResult", "solve"]

# Above this many (model, device) decisions the exact model takes longer to build than it helps.
EXACT_MAX_PAIRS = 60_000
# When CP-SAT follows, the local search gets at most SEARCH_SHARE of the time, and gives up after
# PATIENCE_SHARE of it without progress: on small fleets CP-SAT then often proves the optimum.
SEARCH_SHARE = 0.5
PATIENCE_SHARE = 0.2


def solve(
    problem: PlacementProblem,
    objectives: Sequence[Objective] = (Objective.MIN_DEVICES,),
    time_limit_seconds: float = 10.0,
) -> PlacementResult:
    """The best placement for ``objectives`` (applied lexicographically) found within the time limit.

    Raises :class:`InfeasibleError` naming the models and policies when no placement exists.
    """
    started = time.perf_counter()
    objectives = tuple(dict.fromkeys(objectives)) or (Objective.MIN_DEVICES,)
    instance = compile_problem(problem)
    bound = device_lower_bound(instance)
    reason = explain_infeasible(instance, bound)
    if reason:
        raise InfeasibleError(reason)
    hint = best_heuristic(instance, keep=[keep_current(instance)] if instance.current else ())
    assignment, method, optimal = hint, "first-fit-decreasing", False
    exact = _pairs(instance, hint, objectives[0]) <= EXACT_MAX_PAIRS
    if hint is not None and _devices(hint) > bound and objectives[0] in (Objective.MIN_DEVICES, Objective.MIN_COST):
        remaining = time_limit_seconds - (time.perf_counter() - started)
        deadline = time.perf_counter() + remaining * (SEARCH_SHARE if exact else 1.0)
        patience = remaining * PATIENCE_SHARE if exact else math.inf
        searched = reduce_devices(instance, hint, bound, deadline, patience)
        if _devices(searched) < _devices(hint):
            hint, assignment, method = searched, searched, "local-search"
    if hint is not None and _devices(hint) == bound and objectives == (Objective.MIN_DEVICES,):
        optimal = True
    elif exact:
        remaining = time_limit_seconds - (time.perf_counter() - started)
        outcome = solve_exact(instance, objectives, max(remaining, 0.1), hint)
        if outcome.infeasible:
            raise InfeasibleError(explain_unsolved(instance, proven=True))
        if outcome.assignment is not None:
            assignment, method, optimal = outcome.assignment, "cp-sat", outcome.proven
        bound = max(bound, outcome.device_bound)
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
        solve_seconds=time.perf_counter() - started,
        method=method,
        moves=len(placement.pairs() - problem.current.pairs()) if problem.current is not None else None,
    )


def _devices(assignment: Assignment) -> int:
    return len({d for ds in assignment.values() for d in ds})


def _pairs(instance: Instance, hint: Assignment | None, primary: Objective) -> int:
    """How many (model, device) decisions the exact model will have, once trimmed to the hint."""
    if hint is None or primary not in (Objective.MIN_DEVICES, Objective.MIN_COST):
        return instance.n_models * instance.n_devices
    return instance.n_models * min(instance.n_devices, _devices(hint))


def _within_max_devices(instance: Instance, assignment: Assignment) -> bool:
    limit = instance.problem.max_devices
    return limit is None or _devices(assignment) <= limit
