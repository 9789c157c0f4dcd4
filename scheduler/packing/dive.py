"""Diving through the column-generation LP: from the LP bound to a packing on that many devices.

A dive fixes one pattern of the LP's solution at a time (as many copies as its value rounds to),
re-runs column generation on what is left, and repeats until every model is placed. The pricing
sees only the models still unplaced, so the columns that come in after a fixing fit the residual
problem: this "strong" re-pricing is what finds the packings of the hard classic sets.

One dive rarely meets the bound on those sets. Limited discrepancy search with a tabu list
(Sadykov, Vanderbeck, Pessoa, Tahiri & Uchoa 2019, "Primal heuristics for branch and price: the
assets of diving methods") backtracks: when a fixing's subtree fails, the node's next candidate
pattern is fixed instead, with the patterns already tried there tabu in the whole subtree (still
in the LP, never fixed). At most ``discrepancies`` such detours lie on one path; the search runs
with 1, 2, 3, ... of them until the deadline (iterative widening: the columns priced by the
earlier rounds make the later ones cheaper). A node is pruned as soon as its devices fixed plus
the residual LP's bound (rounded up) exceed the target: the LP bound proves the target, so a
fixing that pushes the residual bound over it is a mistake found at once, where it was made.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import numpy as np

from gpupack.timing import Deadline

ROUNDING_TOLERANCE = 1e-6
MAX_DETOUR_DEPTH = 200  # below this many fixings a path dives on without detours (Python's stack)

# (residual, devices it may still use) -> the residual LP's bound, rounded up; it may stop as soon
# as the bound exceeds those devices. None: the LP is solved to optimality.
Bound = Callable[[np.ndarray, "int | None"], int]


class Master(Protocol):
    columns: list[np.ndarray]

    def usage(self) -> np.ndarray: ...


class _Timeout(Exception):
    pass


def plain_dive(master: Master, residual: np.ndarray, deadline: Deadline, bound: Bound) -> tuple[list[np.ndarray], np.ndarray]:
    """Residual rounding without backtracking: fix every pattern the LP uses at one or more full
    devices (or else the one it uses most) and re-solve the rest. Fast, and on fleets whose LP
    bound is not tight it is the placement to beat. Returns the patterns fixed and what the
    deadline left unplaced."""
    residual, fixed = residual.copy(), list[np.ndarray]()
    while residual.any() and not deadline.passed():
        bound(residual, None)
        usage = master.usage()
        chosen = [(k, math.floor(u + ROUNDING_TOLERANCE)) for k, u in enumerate(usage) if u >= 1 - ROUNDING_TOLERANCE]
        if not chosen:
            chosen = [(int(np.argmax(usage)), 1)]
        for k, copies in sorted(chosen, key=lambda kc: -usage[kc[0]]):
            fixed += take(master.columns[k], copies, residual)
    return fixed, residual


def discrepancy_dive(
    master: Master, residual: np.ndarray, deadline: Deadline, bound: Bound, target: int,
    stop: Callable[[], bool] = lambda: False,
) -> list[np.ndarray] | None:
    """Patterns that pack ``residual`` on exactly ``target`` devices or fewer, or None when the
    search (or the deadline, or ``stop`` returning True: another search found it) ends without."""
    search = _Search(master, deadline, bound, stop)
    try:
        while search.widened:
            search.widened = False
            found = search.run(residual.copy(), target, frozenset(), search.discrepancies, 0)
            if found is not None:
                return found
            search.discrepancies += 1
    except _Timeout:
        pass
    return None


class _Search:
    def __init__(self, master: Master, deadline: Deadline, bound: Bound, stop: Callable[[], bool]):
        self.master, self.deadline, self.bound, self.stop = master, deadline, bound, stop
        self.discrepancies = 1
        self.widened = True  # whether a round left candidates untried (so a wider one differs)

    def run(
        self, residual: np.ndarray, room: int, tabu: frozenset[int], discrepancies: int, depth: int
    ) -> list[np.ndarray] | None:
        """Pack ``residual`` on at most ``room`` devices, with at most ``discrepancies`` detours."""
        if discrepancies == 0 or depth >= MAX_DETOUR_DEPTH:
            return self.pure_dive(residual, room, tabu)
        if not residual.any():
            return []
        candidates = self.candidates(residual, room, tabu)
        self.widened |= len(candidates) > 1 + discrepancies
        tried: set[int] = set()
        for k, copies in candidates[: 1 + discrepancies]:
            rest = residual.copy()
            step = take(self.master.columns[k], copies, rest)
            found = self.run(rest, room - len(step), tabu | tried, discrepancies - len(tried), depth + 1)
            if found is not None:
                return step + found
            tried.add(k)
        return None

    def pure_dive(self, residual: np.ndarray, room: int, tabu: frozenset[int]) -> list[np.ndarray] | None:
        residual, fixed = residual.copy(), list[np.ndarray]()
        while residual.any():
            candidates = self.candidates(residual, room - len(fixed), tabu)
            if not candidates:
                return None
            self.widened |= len(candidates) > 1
            k, copies = candidates[0]
            fixed += take(self.master.columns[k], copies, residual)
        return fixed if len(fixed) <= room else None

    def candidates(self, residual: np.ndarray, room: int, tabu: frozenset[int]) -> list[tuple[int, int]]:
        """The patterns worth fixing here, best first, each with its copies: none when the
        residual LP already proves that ``room`` devices cannot hold what is left."""
        if self.deadline.passed() or self.stop():
            raise _Timeout
        if room <= 0 or self.bound(residual, room) > room:
            return []
        usage = self.master.usage()
        used = [k for k in np.flatnonzero(usage > ROUNDING_TOLERANCE).tolist() if k not in tabu]
        # Closest to a whole number of devices first (the LP is surest of those), then the most used.
        copies = {k: max(1, round(float(usage[k]))) for k in used}
        used.sort(key=lambda k: (abs(usage[k] - copies[k]), -usage[k]))
        return [(k, copies[k]) for k in used]


def take(pattern: np.ndarray, copies: int, residual: np.ndarray) -> list[np.ndarray]:
    """Up to ``copies`` devices of ``pattern``, trimmed to what ``residual`` still holds (updated)."""
    taken = []
    for _ in range(copies):
        device = np.minimum(pattern, residual)
        if not device.any():
            break
        taken.append(device)
        residual -= device
    return taken
