"""Fast placements: first-fit-decreasing over every resource at once.

They seed the local search and CP-SAT with a first solution and are the answer on fleets too large
for both. All work on the integer :class:`Instance`, so they agree exactly with CP-SAT on what fits.
Each model is tested against every open device in one numpy operation, which keeps a fleet of
thousands of models well under a second.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from gpupack.scheduler.packing.instance import Instance
from gpupack.timing import Deadline

Assignment = dict[int, list[int]]  # model index -> device indices
FRESH_AHEAD = 8  # unopened devices looked at before all of them


class _Packing:
    """Open devices in the order they were opened, with the room left on each, and the rules that
    involve other placements (replicas on distinct devices, anti-affinity, forbidden groups). Open devices' rooms sit
    resource-major, so that first fit is a few contiguous numpy comparisons."""

    def __init__(self, instance: Instance):
        self.instance = instance
        self.opened = np.empty(instance.n_devices, dtype=np.int64)
        # [resource, k]: room left on opened[k]
        self.room = np.empty((len(instance.resources), instance.n_devices), dtype=np.int64)
        self.count = 0
        self.slot = np.full(instance.n_devices, -1, dtype=np.int64)
        self.devices_of: list[list[int]] = [[] for _ in range(instance.n_models)]
        self.pinned = not instance.allowed.all()
        self.group_present = np.zeros((len(instance.groups), instance.n_devices), dtype=bool)
        self.groups_of: list[list[int]] = [[] for _ in range(instance.n_models)]
        for g, members in enumerate(instance.groups):
            for i in members:
                self.groups_of[i].append(g)
        # [group, device]: members of each forbidden group already there; the last one may not join.
        self.forbidden_present = np.zeros((len(instance.forbidden), instance.n_devices), dtype=np.int64)
        self.forbidden_others = np.array([len(g) - 1 for g in instance.forbidden], dtype=np.int64)
        self.forbidden_of: list[list[int]] = [[] for _ in range(instance.n_models)]
        for g, members in enumerate(instance.forbidden):
            for i in members:
                self.forbidden_of[i].append(g)

    def first_fit(self, i: int, fresh: np.ndarray | None = None) -> int | None:
        """The first open device model ``i`` fits on, or (given ``fresh``) the first of those unopened devices."""
        if fresh is None:
            devices, room = self.opened[: self.count], self.room[:, : self.count]
        else:
            devices, room = fresh, self.instance.capacity[fresh].T
        ok = self._fitting(i, devices, room, opened=fresh is None)
        k = int(np.argmax(ok)) if len(ok) else 0
        return int(devices[k]) if len(ok) and ok[k] else None

    def fits_on(self, i: int, d: int) -> bool:
        room = self.room[:, self.slot[d]] if self.slot[d] >= 0 else self.instance.capacity[d]
        return bool(self._fitting(i, np.array([d]), room[:, None])[0])

    def _fitting(self, i: int, devices: np.ndarray, room: np.ndarray, opened: bool = False) -> np.ndarray:
        """Where model ``i`` may go among ``devices`` (``opened``: the open devices, in their order)."""
        ok = np.all(room >= self.instance.demand[i][:, None], axis=0)
        if self.pinned:
            ok &= self.instance.allowed[i, devices]
        if self.devices_of[i]:
            if opened:  # a model's devices are open, each at the position its slot gives: no search
                ok[self.slot[self.devices_of[i]]] = False
            else:
                ok &= ~np.isin(devices, self.devices_of[i])
        if self.groups_of[i]:
            ok &= ~self.group_present[self.groups_of[i]][:, devices].any(axis=0)
        if self.forbidden_of[i]:
            mine = self.forbidden_of[i]
            ok &= ~(self.forbidden_present[mine][:, devices] >= self.forbidden_others[mine][:, None]).any(axis=0)
        return ok

    def place(self, i: int, d: int) -> None:
        if self.slot[d] < 0:
            self.opened[self.count], self.room[:, self.count], self.slot[d] = d, self.instance.capacity[d], self.count
            self.count += 1
        self.room[:, self.slot[d]] -= self.instance.demand[i]
        self.devices_of[i].append(d)
        self.group_present[self.groups_of[i], d] = True
        self.forbidden_present[self.forbidden_of[i], d] += 1

    def assignment(self) -> Assignment:
        return {i: sorted(ds) for i, ds in enumerate(self.devices_of)}


def relative_sizes(instance: Instance) -> np.ndarray:
    """Demand as a fraction of the largest device, per resource: the common scale for sorting."""
    largest = np.maximum(instance.capacity.max(axis=0), 1) if instance.n_devices else 1
    return instance.demand / largest


def first_fit_decreasing(
    instance: Instance, order_key: str = "max", start: Assignment | None = None
) -> Assignment | None:
    """Biggest models first (by largest or by summed relative size), each on the first open device
    it fits, else on a new device, opened cheapest per unit of capacity first.

    ``start`` keeps existing placements (for fewest moves). Returns None when some model fits on no
    device.
    """
    packing = _Packing(instance)
    for i, devices in sorted((start or {}).items()):
        for device in sorted(devices):
            packing.place(i, device)
    sizes = relative_sizes(instance)
    key = sizes.max(axis=1) if order_key == "max" else sizes.sum(axis=1)
    order = np.lexsort((-sizes.sum(axis=1), -key))
    room = np.maximum(instance.capacity, 0) / np.maximum(instance.capacity.max(axis=0), 1)
    preference = np.lexsort((np.arange(instance.n_devices), -room.sum(axis=1), instance.cost))
    unopened = 0  # preference[:unopened] are all open
    for i in order:
        for _ in range(int(instance.replicas[i]) - len(packing.devices_of[i])):
            d = packing.first_fit(i)
            if d is None:
                # The first unopened devices first: a fleet offered for the sum of the peaks of 1,000
                # models has 12,000, and looking at all for each new device took 0.3 s.
                while unopened < len(preference) and packing.slot[preference[unopened]] >= 0:
                    unopened += 1
                ahead = preference[unopened:unopened + FRESH_AHEAD]
                d = packing.first_fit(i, ahead[packing.slot[ahead] < 0])
                if d is None:
                    d = packing.first_fit(i, preference[packing.slot[preference] < 0])
                if d is None:
                    return None
            packing.place(i, d)
    return packing.assignment()


def keep_current(instance: Instance) -> Assignment:
    """Today's placements that still fit, biggest first on each device: the start for fewest moves."""
    packing = _Packing(instance)
    sizes = relative_sizes(instance).max(axis=1)
    for i, d in sorted(instance.current, key=lambda pair: -sizes[pair[0]]):
        if len(packing.devices_of[i]) < instance.replicas[i] and packing.fits_on(i, d):
            packing.place(i, d)
    return packing.assignment()


def best_heuristic(
    instance: Instance, keep: Iterable[Assignment] = (), deadline: Deadline = Deadline(math.inf)
) -> Assignment | None:
    """The cheapest of first-fit-decreasing by largest and by summed relative size (and from any
    ``keep``). With one resource both orders are the same and it runs once; once a placement is
    found, the other candidates run only before ``deadline``: on thousands of models each takes a
    second or more of a short budget."""
    keys = ("max",) if instance.demand.shape[1] == 1 else ("max", "sum")
    runs = [lambda key=key: first_fit_decreasing(instance, key) for key in keys]
    runs += [lambda start=start: first_fit_decreasing(instance, "max", start) for start in keep]
    found: list[Assignment] = []
    for run in runs:
        if found and deadline.passed():
            break
        candidate = run()
        if candidate is not None:
            found.append(candidate)
    if not found:
        return None
    return min(found, key=lambda a: (len({d for ds in a.values() for d in ds}), _cost(instance, a)))


def _cost(instance: Instance, assignment: Assignment) -> float:
    return float(sum(instance.cost[d] for d in {d for ds in assignment.values() for d in ds}))
