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
"""

from __future__ import annotations

import highspy
from highspy._core import _Highs
import numpy as np

from gpupack.scheduler.dive import take


def pool_packing(
    columns: list[np.ndarray], counts: np.ndarray, fewer_than: int, time_limit_seconds: float
) -> list[np.ndarray] | None:
    """Patterns (copies per type, trimmed to ``counts``) covering ``counts`` on fewer than
    ``fewer_than`` devices, chosen from ``columns``; None when HiGHS finds none in the time limit."""
    if time_limit_seconds <= 0 or not columns:
        return None
    highs = _Highs()  # the raw binding: highspy.Highs prints a banner on stdout
    highs.setOptionValue("output_flag", False)
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
