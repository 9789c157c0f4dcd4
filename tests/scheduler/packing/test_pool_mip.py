"""The integer programme over the patterns column generation priced: a packing assembled from the
pool where the dive's fixings one at a time miss it."""

import numpy as np

from gpupack.scheduler.packing import colgen, dive
from gpupack.scheduler.packing.pool_mip import PoolSearch, pool_packing
from gpupack.timing import Deadline, wait_until

from tests.scheduler.packing.test_dive import TRIPLETS, _master_and_bound, triplet_instance


def _triplet_patterns(types: colgen.ItemTypes) -> list[np.ndarray]:
    """The 20 exactly full devices of the triplet instance, as copies per type."""
    type_of = {int(types.demand[t, 0]): t for t in range(len(types.counts))}
    patterns = []
    for k in range(0, len(TRIPLETS), 3):
        pattern = np.zeros(len(types.counts), dtype=np.int64)
        for size in TRIPLETS[k : k + 3]:
            pattern[type_of[size]] += 1
        patterns.append(pattern)
    return patterns


def test_the_packing_on_the_lp_bound_is_found_among_the_priced_patterns():
    master, residual, bound, deadline = _master_and_bound(triplet_instance())
    fixed, _ = dive.plain_dive(master, residual, deadline, bound)
    assert len(fixed) == 21  # the plain dive ends one device above the bound
    pool = master.columns + _triplet_patterns(master.types)
    found = pool_packing(pool, residual, len(fixed), 10.0)
    assert found is not None and len(found) == 20
    assert (np.sum(found, axis=0) == residual).all()  # every model once: covering patterns are trimmed
    sizes = master.types.demand[:, 0]
    assert all(int(pattern @ sizes) <= 1000 for pattern in found)


def test_a_pool_without_a_better_packing_finds_none():
    # How long HiGHS takes to prove it (a fraction of the time limit) is bench/placement.py's business.
    master, residual, bound, deadline = _master_and_bound(triplet_instance())
    fixed, _ = dive.plain_dive(master, residual, deadline, bound)
    assert pool_packing(master.columns, residual, len(fixed), 10.0) is None


def test_the_background_search_takes_the_patterns_priced_after_it_started():
    """The dive appends to the pool while the programme solves: the first solve proves the
    dive's own pool holds nothing on 20 devices, the next one takes the full devices added since."""
    master, residual, bound, deadline = _master_and_bound(triplet_instance())
    fixed, _ = dive.plain_dive(master, residual, deadline, bound)
    pool = list(master.columns)
    search = PoolSearch(pool, residual, len(fixed), 20, Deadline.after(60))
    wait_until(lambda: search.pools_searched >= 1, 30, "the first solve, over the dive's pool alone")
    assert not search.reached_target()
    pool += _triplet_patterns(master.types)
    wait_until(search.reached_target, 30, "a solve over the full devices added since")
    found = search.stop()
    assert found is not None and len(found) == 20
    assert (np.sum(found, axis=0) == residual).all()


def test_stopping_the_background_search_returns_at_once_with_nothing_found():
    """Told to stop, it ends without waiting for its deadline: an hour away, far beyond the test's
    own timeout, so a stop that waited for it would fail the test."""
    master, residual, bound, deadline = _master_and_bound(triplet_instance())
    fixed, _ = dive.plain_dive(master, residual, deadline, bound)
    search = PoolSearch(list(master.columns), residual, len(fixed), 20, Deadline.after(3600))
    wait_until(lambda: search.pools_searched >= 1, 30, "the first solve")
    assert search.stop() is None
