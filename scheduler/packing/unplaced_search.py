"""Packing one resource onto exactly ``target`` devices: a search over a partial packing and the
models it leaves out, after Buljubasic & Vasquez's consistent neighbourhood search (CNS_BP, 2016).

``target - 2`` devices are always within capacity; the models on none of them are the unplaced
set. When the unplaced set fits two devices (a subset sum over Python ints as bit sets says so),
those complete a packing on ``target``. A move exchanges up to two models of one device for up to
two unplaced ones, staying within capacity, and is taken when it places more worth: the best such
move over every device is found by one sort and one binary search per way out. A model's worth starts at its size, so
the moves first fill devices as full as they go. When no move places more worth, every unplaced
model's worth grows by PENALTY_SHARE of its size: the models left out longest become the ones a
move wants most, and it makes room for them by leaving out others. That penalty, not a tabu list,
carries the search across the plateaus of the Falkenauer triplets and Hard28, where nearly every
device must be exactly full.
"""

from __future__ import annotations

import functools

import numpy as np

from gpupack.timing import Deadline

# Each unplaced model's worth grows by this share of its size at every local optimum.
PENALTY_SHARE = 0.002
SPARE_DEVICES = 2  # devices the unplaced models must fit, as CNS_BP does
MAX_DEVICES_PER_MOVE = 100  # devices whose models a move considers, drawn anew per move
NOISE = 1e-6  # random tie-breaking between moves of equal worth, as a share of the sizes
SPLIT_MAX_UNITS = 1 << 22  # the subset sum's bit set: half a megabyte, a few milliseconds a split
SPLIT_MAX_ENUMERATED = 20  # unplaced models whose subsets are enumerated instead: 8 MB of sums


def pack_single_resource(
    sizes: np.ndarray, capacity: int, groups: list[list[int]], target: int, deadline: Deadline, seed: int = 0
) -> list[list[int]] | None:
    """``target`` groups of the models (indices into ``sizes``, whole units), each within
    ``capacity``, starting from ``groups`` (a packing on more devices); None when ``deadline``
    passes first."""
    rng = np.random.default_rng(seed)
    size = [int(s) for s in sizes]
    if target < 1:
        return None
    spare = min(SPARE_DEVICES, target)
    n = len(size)
    weight = np.asarray(size, dtype=np.int64)
    by_load = sorted(groups, key=lambda g: -sum(size[i] for i in g))
    where = np.full(n, -1, dtype=np.int64)
    for d, g in enumerate(by_load[: target - spare]):
        where[list(g)] = d
    loads = np.zeros(target - spare, dtype=np.int64)
    np.add.at(loads, where[where >= 0], weight[where >= 0])
    # Index n stands for "no model": zero size and worth, so that pairs padded with it sum right.
    padded_weight = np.append(weight, 0)
    padded_worth = np.append(weight * (1.0 + NOISE * rng.random(n)), 0.0)
    while True:
        unplaced = np.flatnonzero(where < 0)
        if int(weight[unplaced].sum()) <= spare * capacity:
            split = _split(unplaced.tolist(), size, capacity, spare)
            if split is not None:
                devices: list[list[int]] = [[] for _ in range(target - spare)]
                for i in np.flatnonzero(where >= 0):
                    devices[where[i]].append(int(i))
                return devices + split
        if deadline.passed() or not len(loads):
            return None
        # What comes in: nothing, one unplaced model or two; what leaves a device: nothing, one or two
        # (n: no model, a zero row of the padded arrays).
        ia, ja = _pairs(len(unplaced))
        none_in = np.full(len(unplaced) + 1, n)
        come_first = np.concatenate([none_in[:1], unplaced, unplaced[ia]])
        come_second = np.concatenate([none_in, unplaced[ja]])
        if len(loads) > MAX_DEVICES_PER_MOVE:  # thousands of devices: a sample of them per move
            considered = rng.choice(len(loads), size=MAX_DEVICES_PER_MOVE, replace=False)
            chosen = np.zeros(len(loads) + 1, dtype=bool)  # the last entry stands for "unplaced" (-1)
            chosen[considered] = True
            placed = np.flatnonzero(chosen[where])
        else:
            considered, placed = np.arange(len(loads)), np.flatnonzero(where >= 0)
        first, second = pairs_on_devices(where, placed)
        leave_first = np.concatenate([np.full(len(considered), n), placed, first])
        leave_second = np.concatenate([np.full(len(considered) + len(placed), n), second])
        device = np.concatenate([considered, where[placed], where[first]])
        in_weight = padded_weight[come_first] + padded_weight[come_second]
        in_worth = padded_worth[come_first] + padded_worth[come_second]
        out_weight = padded_weight[leave_first] + padded_weight[leave_second]
        out_worth = padded_worth[leave_first] + padded_worth[leave_second]
        # For each way out, the way in worth most among those that fit the room it leaves.
        by_weight = np.argsort(in_weight, kind="stable")
        best_in = np.maximum.accumulate(in_worth[by_weight])
        room = capacity - loads[device] + out_weight
        fitting = np.searchsorted(in_weight[by_weight], room, side="right") - 1
        gain = np.where(fitting >= 0, best_in[np.maximum(fitting, 0)] - out_worth, -np.inf)
        best = int(np.argmax(gain))
        if gain[best] <= 1e-9:
            padded_worth[unplaced] += PENALTY_SHARE * weight[unplaced]
            continue
        h = int(np.argmax(np.where(in_weight <= room[best], in_worth, -np.inf)))
        d = device[best]
        out = [i for i in (leave_first[best], leave_second[best]) if i < n]
        into = [i for i in (come_first[h], come_second[h]) if i < n]
        where[out] = -1
        where[into] = d
        loads[d] += int(weight[into].sum()) - int(weight[out].sum())


def pairs_on_devices(where: np.ndarray, placed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every two of the ``placed`` models that share a device (``where``), in a fixed number of
    array operations (the search makes one call a move). The overload search of fixed_count.py,
    whose models are all placed, uses it too."""
    order = placed[np.argsort(where[placed], kind="stable")]
    device = where[order]
    m = len(order)
    starts = np.flatnonzero(np.concatenate(([True], device[1:] != device[:-1])))[: m]
    ends = np.append(starts[1:], m)[: len(starts)]
    later = np.repeat(ends, ends - starts) - np.arange(m) - 1  # models after each one on its device
    first = np.repeat(np.arange(m), later)
    second = first + 1 + np.arange(len(first)) - np.repeat(np.cumsum(later) - later, later)
    # Nearest in the order first, as a loop over the distance would list them.
    by_distance = np.argsort((second - first) * m + first, kind="stable")
    return order[first[by_distance]], order[second[by_distance]]


@functools.lru_cache(maxsize=8)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(n, k=1)``, kept: the unplaced set has the same few sizes move after move.
    Bounded, because a long-running rebalancer meets every size over time and each costs n² entries."""
    return np.triu_indices(n, k=1)


def _split(unplaced: list[int], exact_size: list[int], exact_capacity: int, spare: int) -> list[list[int]] | None:
    """The unplaced models on ``spare`` (1 or 2) devices, or None when they do not fit: for two, a
    subset sum (Python ints as bit sets) finds a first device's load that leaves the rest within
    capacity. A capacity finer than SPLIT_MAX_UNITS (sizes in bytes that share no round unit: a bit
    set of 80 GiB would take 10 GB) has its few unplaced models' subsets enumerated instead, and
    many are searched on a coarser grid, sizes rounded up: a split found there fits, one missed
    there only leaves the search to go on."""
    total = sum(exact_size[i] for i in unplaced)
    if total > spare * exact_capacity:
        return None
    if spare == 1 or total <= exact_capacity:
        return [unplaced] + [[] for _ in range(spare - 1)]
    if exact_capacity > SPLIT_MAX_UNITS and len(unplaced) <= SPLIT_MAX_ENUMERATED:
        return _split_by_enumeration(unplaced, exact_size, exact_capacity, total)
    grid = -(-exact_capacity // SPLIT_MAX_UNITS)
    size = {i: -(-exact_size[i] // grid) for i in unplaced}
    capacity = exact_capacity // grid
    total = sum(size.values())
    reach, history = 1, []
    mask = (1 << (capacity + 1)) - 1
    for i in unplaced:
        history.append(reach)
        reach = (reach | reach << size[i]) & mask
    low = total - capacity
    window = reach >> low
    if not window:
        return None
    load = low + (window & -window).bit_length() - 1
    first: list[int] = []
    for i, before in zip(reversed(unplaced), reversed(history)):
        if not before >> load & 1:
            first.append(i)
            load -= size[i]
    chosen = set(first)
    return [first, [i for i in unplaced if i not in chosen]]


def _split_by_enumeration(unplaced: list[int], size: list[int], capacity: int, total: int) -> list[list[int]] | None:
    """:func:`_split` onto two devices by every subset's sum, exact at any capacity."""
    sums = np.zeros(1, dtype=np.int64)
    for i in unplaced:  # bit k of a subset's index: unplaced[k] is in it
        sums = np.concatenate([sums, sums + size[i]])
    fitting = np.flatnonzero((sums <= capacity) & (total - sums <= capacity))
    if not len(fitting):
        return None
    subset = int(fitting[0])
    return [[i for k, i in enumerate(unplaced) if subset >> k & 1 == side] for side in (1, 0)]
