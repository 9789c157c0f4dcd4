"""Packing onto fewer devices, down to the bound's count: for one resource the search over the
unplaced models (unplaced_search.py), for several a tabu search over overloaded placements.

Column generation proves the bound on the classic instances (IRUP), but its dive and the local
search that closes devices one at a time often stop one device above it: on Hard28 and the
Falkenauer triplets nearly every device must be full, and a search that keeps every device within
capacity has almost no room to move. This search works the other way round (as the tabu phase of
Buljubasic & Vasquez's consistent neighbourhood search does): every model is placed on one of
``target`` devices from the start, devices may be overloaded, and moves (a model to another
device, or two models exchanged) lower the total overload, measured per resource as a share of
capacity. A move back to a device a model just left is tabu for a few iterations, which carries
the search across the plateaus where no move improves. Zero overload is a placement on ``target``
devices.

Only for problems column generation accepts (identical devices, one copy per model, no pins), and
only up to MAX_PAIRS (model, device) pairs: the tabu list is one entry per pair.
"""

from __future__ import annotations

import numpy as np

from gpupack.scheduler.packing.heuristic import Assignment
from gpupack.scheduler.packing.instance import Instance
from gpupack.scheduler.packing.unplaced_search import pack_single_resource, pairs_on_devices
from gpupack.timing import Deadline

TABU_TENURE = (5, 15)  # iterations a model may not return to the device it left, drawn per move
NOISE = 1e-9
MAX_PAIRS = 2_000_000
MAX_LEAVING = 16  # models of the overloaded device considered per move
FILL_WEIGHT = 1e-3  # random tie-breaking between moves of equal overload


def searchable(instance: Instance, bound: int) -> bool:
    """Whether :func:`pack_fewer` can run: the overload search keeps a tabu entry per (model, device)."""
    return _single_resource(instance) or instance.n_models * bound <= MAX_PAIRS


def _single_resource(instance: Instance) -> bool:
    return int(instance.bounded[0].sum()) == 1


def pack_fewer(instance: Instance, assignment: Assignment, bound: int, deadline: Deadline) -> Assignment | None:
    """``assignment``'s models on fewer devices, as few as the search reaches by ``deadline`` but
    not below ``bound``; None when it finds no packing on fewer.

    With one resource the search steps down one device at a time, as CNS_BP does: when column
    generation stopped early (thousands of models) or the instance is not IRUP (the ANI sets), the
    bound itself is out of reach, and a packing on one device fewer still counts. With several
    resources the overload search aims at the bound directly.
    """
    if not _single_resource(instance):
        return pack_onto(instance, assignment, bound, deadline)
    column = int(np.flatnonzero(instance.bounded[0])[0])
    used = sorted({d for ds in assignment.values() for d in ds})
    by_device: dict[int, list[int]] = {}
    for i, ds in assignment.items():
        by_device.setdefault(ds[0], []).append(i)
    groups, best = list(by_device.values()), None
    while len(groups) > bound and not deadline.passed():
        fewer = pack_single_resource(
            instance.demand[:, column], int(instance.capacity[0, column]), groups, len(groups) - 1, deadline
        )
        if fewer is None:
            break
        groups = [g for g in fewer if g]
        best = {i: [used[k]] for k, g in enumerate(groups) for i in g}
    return best


def pack_onto(
    instance: Instance, assignment: Assignment, target: int, deadline: Deadline, seed: int = 0
) -> Assignment | None:
    """``assignment``'s models on ``target`` devices within capacity, or None when ``deadline``
    passes first. ``assignment`` (one device per model) is the start: its fullest ``target``
    devices are kept and the others' models spread where they overload least."""
    rng = np.random.default_rng(seed)
    capacity = np.maximum(instance.capacity[0], 1)
    bounded = instance.bounded[0]
    demand = np.where(bounded, instance.demand, 0)  # [model, resource], whole units: sums stay exact
    n = instance.n_models
    used = sorted({d for ds in assignment.values() for d in ds})
    where = np.empty(n, dtype=np.int64)
    for i, ds in assignment.items():
        where[i] = used.index(ds[0])
    loads = np.zeros((len(used), demand.shape[1]), dtype=np.int64)
    np.add.at(loads, where, demand)
    keep = np.argsort(-loads.sum(axis=1), kind="stable")[:target]
    renumber = np.full(len(used), -1)
    renumber[keep] = np.arange(target)
    where = renumber[where]
    loads = np.zeros((target, demand.shape[1]), dtype=np.int64)
    np.add.at(loads, where[where >= 0], demand[where >= 0])
    for i in sorted(np.flatnonzero(where < 0), key=lambda i: -demand[i].sum()):
        d = int(np.argmin(_over(loads + demand[i], capacity) - _over(loads, capacity)))
        where[i], loads[d] = d, loads[d] + demand[i]
    tabu = np.zeros((n + 1, target), dtype=np.int32)  # until when model i may not return to d; row n: no model
    iteration = 0
    while (excess := np.maximum(loads - capacity, 0).sum(axis=-1)).any():
        iteration += 1
        if deadline.passed():
            return None
        a = int(rng.choice(np.flatnonzero(excess)))
        over = _over(loads, capacity)
        inside = np.flatnonzero(where == a)
        if len(inside) > MAX_LEAVING:  # a device of many small models: pairs of a sample of them
            inside = rng.choice(inside, size=MAX_LEAVING, replace=False)
        # What leaves a: one model or two (-1: none), and what comes back from device b: nothing,
        # one model or two models of the same device.
        ia, ja = np.triu_indices(len(inside), k=1)
        leave = np.concatenate([np.stack([inside, np.full(len(inside), -1)], 1),
                                np.stack([inside[ia], inside[ja]], 1)])
        first, second = pairs_on_devices(where, np.arange(len(where)))
        same = where[first] != a
        outside = np.flatnonzero(where != a)
        come = np.concatenate([np.stack([np.full(target, -1), np.full(target, -1)], 1),
                               np.stack([outside, np.full(len(outside), -1)], 1),
                               np.stack([first[same], second[same]], 1)])
        come_bin = np.concatenate([np.arange(target), where[outside], where[first[same]]])
        keep_move = come_bin != a
        come, come_bin = come[keep_move], come_bin[keep_move]
        padded = np.vstack([demand, np.zeros(demand.shape[1], dtype=np.int64)])  # row -1: no model
        out_demand = padded[leave].sum(axis=1)  # [g, resource]
        in_demand = padded[come].sum(axis=1)  # [h, resource]
        new_a = loads[a][None, None, :] - out_demand[:, None, :] + in_demand[None, :, :]
        new_b = loads[come_bin][None, :, :] - in_demand[None, :, :] + out_demand[:, None, :]
        delta = _over(new_a, capacity) - over[a] + _over(new_b, capacity) - over[come_bin][None, :]
        leaving = np.maximum(tabu[leave[:, 0]], tabu[leave[:, 1]])[:, come_bin]  # [g, h]
        coming = np.maximum(tabu[come[:, 0], a], tabu[come[:, 1], a])  # [h]
        banned = (leaving > iteration) | (coming > iteration)[None, :]
        delta = np.where(banned, np.inf, delta) + rng.random(delta.shape) * NOISE
        g, h = np.unravel_index(int(np.argmin(delta)), delta.shape)
        if not np.isfinite(delta[g, h]):
            continue
        b, tenure = int(come_bin[h]), int(rng.integers(*TABU_TENURE))
        loads[a] += in_demand[h] - out_demand[g]
        loads[b] += out_demand[g] - in_demand[h]
        for i in leave[g][leave[g] >= 0]:
            where[i], tabu[i, a] = b, iteration + tenure
        for j in come[h][come[h] >= 0]:
            where[j], tabu[j, b] = a, iteration + tenure
    return {i: [int(used[keep[where[i]]])] for i in range(n)}


def _over(loads: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """The search's cost per device (last axis: resources): the square root of its overload, in
    shares of capacity, so that overload gathers on few devices, less a little for being full."""
    share = loads / capacity
    fill = np.minimum(share, 1.0).sum(axis=-1)
    return np.sqrt(np.maximum(share - 1.0, 0.0).sum(axis=-1)) - FILL_WEIGHT * fill * fill
