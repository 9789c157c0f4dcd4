"""Fast placements: first-fit-decreasing over every resource at once, then an emptying pass.

They seed CP-SAT with a good first solution and are the answer on fleets too large for it. All
work on the integer :class:`Instance`, so they agree exactly with CP-SAT on what fits.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from gpupack.scheduler.instance import Instance

Assignment = dict[int, list[int]]  # model index -> device indices


class _Packing:
    """Loads, members and anti-affinity occupancy of every device, updated one placement at a time."""

    def __init__(self, instance: Instance):
        self.instance = instance
        self.load = np.zeros_like(instance.capacity)
        self.members: list[set[int]] = [set() for _ in range(instance.n_devices)]
        self.devices_of: list[set[int]] = [set() for _ in range(instance.n_models)]
        self.group_present = np.zeros((len(instance.groups), instance.n_devices), dtype=bool)
        self.groups_of: list[list[int]] = [[] for _ in range(instance.n_models)]
        for g, members in enumerate(instance.groups):
            for i in members:
                self.groups_of[i].append(g)

    def fits(self, i: int, devices: np.ndarray) -> np.ndarray:
        inst = self.instance
        ok = inst.allowed[i, devices] & np.all(self.load[devices] + inst.demand[i] <= inst.capacity[devices], axis=1)
        if self.devices_of[i]:
            ok &= ~np.isin(devices, list(self.devices_of[i]))
        if self.groups_of[i]:
            ok &= ~self.group_present[self.groups_of[i]][:, devices].any(axis=0)
        return ok

    def place(self, i: int, d: int) -> None:
        self.load[d] += self.instance.demand[i]
        self.members[d].add(i)
        self.devices_of[i].add(d)
        self.group_present[self.groups_of[i], d] = True

    def remove(self, i: int, d: int) -> None:
        self.load[d] -= self.instance.demand[i]
        self.members[d].discard(i)
        self.devices_of[i].discard(d)
        for g in self.groups_of[i]:
            self.group_present[g, d] = any(j in self.members[d] for j in self.instance.groups[g])

    def used(self) -> list[int]:
        return [d for d, m in enumerate(self.members) if m]

    def assignment(self) -> Assignment:
        return {i: sorted(ds) for i, ds in enumerate(self.devices_of)}


def relative_sizes(instance: Instance) -> np.ndarray:
    """Demand as a fraction of the largest device, per resource: the common scale for sorting."""
    largest = np.maximum(instance.capacity.max(axis=0), 1) if instance.n_devices else 1
    return instance.demand / largest


def first_fit_decreasing(
    instance: Instance, order_key: str = "max", start: Assignment | None = None, improved: bool = True
) -> Assignment | None:
    """Biggest models first, each on the first open device it fits, else on a new device.

    New devices are opened cheapest per unit of capacity first. ``start`` keeps existing
    placements (for fewest moves); ``improved`` adds the emptying pass. Returns None when some
    model fits on no device.
    """
    packing = _Packing(instance)
    for i, devices in (start or {}).items():
        for d in devices:
            packing.place(i, d)
    sizes = relative_sizes(instance)
    key = sizes.max(axis=1) if order_key == "max" else sizes.sum(axis=1)
    order = np.lexsort((-sizes.sum(axis=1), -key))
    room = np.maximum(instance.capacity, 0) / np.maximum(instance.capacity.max(axis=0), 1)
    preference = np.lexsort((np.arange(instance.n_devices), -room.sum(axis=1), instance.cost))
    opened = np.array(packing.used(), dtype=np.int64)
    for i in order:
        for _ in range(int(instance.replicas[i]) - len(packing.devices_of[i])):
            candidates = opened[packing.fits(i, opened)] if len(opened) else opened
            if len(candidates):
                packing.place(i, int(candidates[0]))
                continue
            fresh = preference[~np.isin(preference, opened)]
            fresh = fresh[packing.fits(i, fresh)]
            if not len(fresh):
                return None
            packing.place(i, int(fresh[0]))
            opened = np.append(opened, fresh[0])
    return improve(instance, packing) if improved else packing.assignment()


def improve(instance: Instance, packing: _Packing) -> Assignment:
    """Empty the least-filled devices into the others (best fit), as long as one empties."""
    sizes = relative_sizes(instance)
    emptied = True
    while emptied:
        emptied = False
        used = packing.used()
        fill = {d: float((packing.load[d] / instance.capacity[d].clip(1)).mean()) for d in used}
        for d in sorted(used, key=lambda d: (fill[d], -instance.cost[d])):
            if _empty(packing, d, sizes):
                emptied = True
    return packing.assignment()


def _empty(packing: _Packing, d: int, sizes: np.ndarray) -> bool:
    others = np.array([e for e in packing.used() if e != d], dtype=np.int64)
    scale = np.maximum(packing.instance.capacity.max(axis=0), 1)
    moved: list[tuple[int, int]] = []
    for i in sorted(packing.members[d], key=lambda i: -sizes[i].max()):
        packing.remove(i, d)
        candidates = others[packing.fits(i, others)] if len(others) else others
        if not len(candidates):
            packing.place(i, d)
            for j, e in reversed(moved):
                packing.remove(j, e)
                packing.place(j, d)
            return False
        slack = (packing.instance.capacity[candidates] - packing.load[candidates]) / scale
        fullest = candidates[np.argmin(slack.sum(axis=1))]
        packing.place(i, int(fullest))
        moved.append((i, int(fullest)))
    return True


def keep_current(instance: Instance) -> Assignment:
    """Today's placements that still fit, biggest first on each device: the start for fewest moves."""
    packing = _Packing(instance)
    sizes = relative_sizes(instance).max(axis=1)
    for i, d in sorted(instance.current, key=lambda pair: -sizes[pair[0]]):
        if len(packing.devices_of[i]) < instance.replicas[i] and packing.fits(i, np.array([d]))[0]:
            packing.place(i, d)
    return packing.assignment()


def best_heuristic(instance: Instance, keep: Iterable[Assignment] = ()) -> Assignment | None:
    """The cheapest of first-fit-decreasing by largest and by summed relative size (and any ``keep``)."""
    candidates = [a for a in (first_fit_decreasing(instance, key) for key in ("max", "sum")) if a is not None]
    candidates += [a for a in (first_fit_decreasing(instance, "max", start) for start in keep) if a is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda a: (len({d for ds in a.values() for d in ds}), _cost(instance, a)))


def _cost(instance: Instance, assignment: Assignment) -> float:
    return float(sum(instance.cost[d] for d in {d for ds in assignment.values() for d in ds}))
