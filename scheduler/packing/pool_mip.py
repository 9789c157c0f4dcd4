"""The integer programme over the patterns column generation has priced so far (price and branch):
a packing on fewer devices assembled from the pool, where the dive's one-at-a-time fixings miss it.

By the time the dive has backtracked for a few seconds, the master holds a thousand or more
patterns, priced for the residual problems of many different partial packings. On Hard28 the
packing on the LP bound's device count is usually among their combinations even where limited
discrepancy search has not reached it: HiGHS's MIP solver, given the pool as a covering problem
(each type covered at least its count, one device per pattern), found it on five of the seven
Hard28 instances the search missed in 10 s, within one to five seconds. A dive alone given 40 s
found three. The objective is integral, so a solution on the LP bound's count ends the solve at
once: HiGHS rounds its dual bound up to it.

The two searches find different instances, and each needs most of the time limit for its own
(Hard28_BPP144: 5.7 s for either alone), so :class:`PoolSearch` runs the integer programme in a
thread of its own beside the dive rather than after it. HiGHS releases the GIL while it solves, so
on two cores the dive keeps its pace; whichever finds the packing first stops the other.
"""

from __future__ import annotations

import threading

import highspy
from highspy._core import _Highs, cb
import numpy as np

from gpupack.scheduler.packing.dive import take
from gpupack.timing import Deadline

# The first solve, over the pool as the dive starts, may take this share of the time; the next
# takes the patterns priced since and the rest. A solve over an early pool can run to the deadline
# without a packing that a later, larger one finds in seconds (Hard28_BPP419: 5 s over the
# 1,231 patterns priced 3 s into the dive). Measured on the six Hard28 instances whose packing
# takes the longest to find: 0.15 and 0.3 find all six (slowest 7.2 and 8.2 s); 0.5, and one
# solve to the deadline, miss BPP419.
FIRST_SOLVE_SHARE = 0.15


def pool_packing(
    columns: list[np.ndarray], counts: np.ndarray, fewer_than: int, time_limit_seconds: float,
    stop: threading.Event | None = None,
) -> list[np.ndarray] | None:
    """Patterns (copies per type, trimmed to ``counts``) covering ``counts`` on fewer than
    ``fewer_than`` devices, chosen from ``columns``; None when HiGHS finds none in the time limit,
    or before ``stop`` is set (it interrupts the solve within a few tenths of a second)."""
    if time_limit_seconds <= 0 or not columns:
        return None
    highs = _Highs()  # the raw binding: highspy.Highs prints a banner on stdout
    highs.setOptionValue("output_flag", False)
    if stop is not None:
        def interrupt(kind: cb.HighsCallbackType, message: str, data_out: cb.HighsCallbackOutput,
                      data_in: cb.HighsCallbackInput, user_data: object) -> None:
            data_in.user_interrupt = stop.is_set()

        highs.setCallback(interrupt, None)
        highs.startCallback(cb.HighsCallbackType.kCallbackMipInterrupt)
        highs.startCallback(cb.HighsCallbackType.kCallbackSimplexInterrupt)
    highs.setOptionValue("time_limit", float(time_limit_seconds))
    # A cutoff: only solutions better than the packing in hand are worth the search.
    highs.setOptionValue("objective_bound", fewer_than - 0.5)
    inf = highspy.kHighsInf
    for count in counts:
        highs.addRow(float(count), inf, 0, np.array([], dtype=np.int32), np.array([], dtype=np.float64))
    for column in columns:
        rows = np.flatnonzero(column).astype(np.int32)
        highs.addCol(1.0, 0.0, inf, len(rows), rows, column[rows].astype(np.float64))
    every = np.arange(len(columns), dtype=np.int32)
    highs.changeColsIntegrality(len(columns), every, np.full(len(columns), highspy.HighsVarType.kInteger))
    highs.run()
    if highs.getInfo().primal_solution_status != 2:  # 2: a feasible solution exists
        return None
    copies = np.rint(np.asarray(highs.getSolution().col_value)).astype(np.int64)
    residual, packing = counts.copy(), list[np.ndarray]()
    for k in np.flatnonzero(copies > 0):
        packing += take(columns[k], int(copies[k]), residual)
    if residual.any() or len(packing) >= fewer_than:
        return None
    return packing


class PoolSearch:
    """:func:`pool_packing` in a background thread until ``deadline``, over ``columns`` as the
    dive grows them: each solve takes the pool as it stands, and one that ends without reaching
    ``target`` devices is followed by one over the patterns priced since, below the best packing
    found so far."""

    def __init__(self, columns: list[np.ndarray], counts: np.ndarray, fewer_than: int, target: int, deadline: Deadline):
        self.best: list[np.ndarray] | None = None
        self._columns, self._counts, self._target, self._deadline = columns, counts.copy(), target, deadline
        self._fewer_than = fewer_than
        self.pools_searched = 0  # solves ended, best updated: a count to wait on rather than a sleep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpupack-pool-mip", daemon=True)
        self._thread.start()

    def reached_target(self) -> bool:
        return self.best is not None and len(self.best) <= self._target

    def stop(self) -> list[np.ndarray] | None:
        """The fewest devices found, once the solve in progress has been interrupted."""
        self._stop.set()
        self._thread.join()
        return self.best

    def _run(self) -> None:
        solved = 0
        while not self._stop.is_set() and not self.reached_target():
            remaining = self._deadline.remaining()
            if remaining <= 0:
                return
            pool = self._columns[: len(self._columns)]  # the dive appends while this solves
            if len(pool) == solved:
                self._stop.wait(0.05)  # this pool was searched: wait for the dive to price more
                continue
            limit = remaining * FIRST_SOLVE_SHARE if not solved else remaining
            solved = len(pool)
            fewer_than = len(self.best) if self.best is not None else self._fewer_than
            found = pool_packing(pool, self._counts, fewer_than, limit, self._stop)
            if found is not None:
                self.best = found
            self.pools_searched += 1
