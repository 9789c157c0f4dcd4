"""Ruin and recreate on a few devices at a time, to close devices that greedy packing leaves open.

First-fit-decreasing ends a few percent above the lower bound on hard fleets (models that only fit
well in threes, a fleet bounded by utilisation rather than memory): reaching the bound needs
exchanges across several devices at once, which no greedy order makes. Here the least-filled
device is closed and its models go to a pool. Cheap exchanges of up to two pool models for up to
two models of one device come first, while they shrink the pool; then, again and again, two open
devices are emptied and their models plus the pool repacked onto them exactly, by enumerating
subsets in numpy (a millisecond, where the CP-SAT model this replaced took twenty). When that has
not shrunk the pool for a while, one repack of four devices by a short CP-SAT run finds the longer
chains of exchanges that two devices cannot hold. The pool never grows (in scalar size), and among
equal repackings the fullest device is filled first, so that room gathers on a few devices where a
pool model eventually fits: the large-neighbourhood search of Shaw (CP 1998) with the
slack-gathering idea of minimum-bin-slack packing (Gupta and Ho, 1999).

Models with replicas or in an anti-affinity or forbidden group stay where they are: moving them would
need the distinct-device rules re-checked across devices, and such fleets are small enough for full CP-SAT.
"""

from __future__ import annotations

import math

import numpy as np

from gpupack import timing
from gpupack.scheduler.packing.heuristic import Assignment
from gpupack.scheduler.packing.instance import Instance
from gpupack.timing import Deadline

MAX_REPACK_MODELS = 14  # 2^14 subsets: about a millisecond per repack
WIDE_REPACK_DEVICES = 4
WIDE_REPACK_SECONDS = 0.02
WIDE_REPACK_EVERY = 100  # fast repacks without progress before a wide one: a fifth of the time
FILL_DIVISOR = 10_000  # the wide repack's slack-gathering tie-break, in hundredths of a device
SIZE_UNITS = 1_000_000  # a model's scalar size, in millionths of the largest device
ROOM_FLOOR = 0.05  # devices with no room are still picked for repacking now and then
SCARCITY_POWER = 4  # how strongly the fleet's bottleneck resource dominates a model's scalar size


class _Search:
    """Open devices, their movable models, and the pool of models still to place."""

    def __init__(self, instance: Instance, assignment: Assignment, rng: np.random.Generator):
        self.instance, self.rng = instance, rng
        grouped = np.zeros(instance.n_models, dtype=bool)
        for group in (*instance.groups, *instance.forbidden):
            grouped[group] = True
        movable = (instance.replicas == 1) & ~grouped
        self.size = _scalar_sizes(instance)
        self.fixed_load = np.zeros_like(instance.capacity)
        self.members: dict[int, list[int]] = {}
        self.fixed: dict[int, list[int]] = {}
        for i, devices in assignment.items():
            for d in devices:
                if movable[i]:
                    self.members.setdefault(d, []).append(i)
                else:
                    self.fixed.setdefault(d, []).append(i)
                    self.fixed_load[d] += instance.demand[i]
        self.open = sorted(set(self.members) | set(self.fixed))
        self.pool: list[int] = []
        # One extra row (index -1) stands for "no model", so that pairs padded with -1 sum correctly.
        self.padded_demand = np.vstack([instance.demand, np.zeros((1, len(instance.resources)), dtype=np.int64)])
        self.padded_size = np.append(self.size, 0.0)
        self.padded_allowed = np.vstack([instance.allowed, np.ones((1, instance.n_devices), dtype=bool)])
        self.load = self.fixed_load.copy()
        self.fill = np.zeros(instance.n_devices)  # scalar size of each device's movable models
        self._subsets: dict[int, np.ndarray] = {}
        for d, models in list(self.members.items()):
            self._set_members(d, models)

    def assignment(self) -> Assignment:
        result: Assignment = {i: [] for i in range(self.instance.n_models)}
        for by_device in (self.members, self.fixed):
            for d, models in by_device.items():
                for i in models:
                    result[i].append(d)
        return result

    def close_one(self) -> bool:
        """Close the open device whose models are smallest in all; False if every one has fixed models."""
        closable = [d for d in self.open if not self.fixed.get(d)]
        if not closable:
            return False
        d = min(closable, key=lambda d: (self.fill[d], -self.instance.cost[d]))
        self.pool = self.members.get(d, [])
        self._set_members(d, [])
        self.open.remove(d)
        return True

    def descend(self) -> None:
        """Exchange up to two pool models for up to two models of one open device while that
        shrinks the pool, biggest shrink first: cheap, so it runs before every repacking."""
        while self.pool:
            incoming = _pairs_and_singles(self.pool)
            subsets = self._open_subsets()
            devices, outgoing = subsets[:, 0], subsets[:, 1:]
            room = self.instance.capacity[devices] - self.load[devices] + self.padded_demand[outgoing].sum(axis=1)
            in_demand = self.padded_demand[incoming].sum(axis=1)
            fits = np.all(in_demand[:, None, :] <= room[None, :, :], axis=2)
            fits &= (self.padded_allowed[incoming[:, 0]] & self.padded_allowed[incoming[:, 1]])[:, devices]
            gain = self.padded_size[incoming].sum(axis=1)[:, None] - self.padded_size[outgoing].sum(axis=1)[None, :]
            gain = np.where(fits, gain, 0.0)
            a, b = np.unravel_index(int(np.argmax(gain)), gain.shape)
            if gain[a, b] <= 1e-12:
                return
            d = int(devices[b])
            self._move(d, placed=[int(i) for i in incoming[a] if i >= 0], removed=[int(i) for i in outgoing[b] if i >= 0])

    def _move(self, d: int, placed: list[int], removed: list[int]) -> None:
        self.pool = [i for i in self.pool if i not in placed] + removed
        self._set_members(d, [i for i in self.members.get(d, []) if i not in removed] + placed)

    def _set_members(self, d: int, models: list[int]) -> None:
        self.members[d] = models
        self.load[d] = self.fixed_load[d] + self.instance.demand[models].sum(axis=0)
        self.fill[d] = self.size[models].sum()
        self._subsets.pop(d, None)

    def _open_subsets(self) -> np.ndarray:
        """Rows (device, model, model): every open device's empty set, single models and pairs."""
        for d in self.open:
            if d not in self._subsets:
                rows = np.vstack([[[-1, -1]], _pairs_and_singles(self.members.get(d, []))])
                self._subsets[d] = np.hstack([np.full((len(rows), 1), d, dtype=np.int64), rows])
        return np.concatenate([self._subsets[d] for d in self.open])

    def repack_some(self, wide: bool = False) -> bool:
        """Repack the pool with the models of a few open devices (those with most room more likely):
        two devices exactly, by enumeration, or (``wide``) four by a short CP-SAT run, which finds
        the chains of exchanges that two devices cannot hold. True when the pool changed, so that
        exchanges with the other devices are worth trying again."""
        room = 1.0 - self.fill[self.open]
        weights = np.clip(room, 0, None) + ROOM_FLOOR
        count = min(WIDE_REPACK_DEVICES if wide else 2, len(self.open))
        chosen = self.rng.choice(len(self.open), size=count, replace=False, p=weights / weights.sum())
        devices = sorted((self.open[k] for k in chosen), key=lambda d: -self.fill[d])
        members = [i for d in devices for i in self.members.get(d, [])]
        spare = MAX_REPACK_MODELS - len(members)
        if wide:
            pool = self.pool
        elif spare < 0:
            return False
        else:
            pool = [int(i) for i in self.rng.choice(self.pool, size=min(spare, len(self.pool)), replace=False)]
        models = np.array(members + pool, dtype=np.int64)
        units = np.round(self.size[models] * SIZE_UNITS).astype(np.int64)
        rooms = self.instance.capacity[devices] - self.fixed_load[devices]
        allowed = self.instance.allowed[np.ix_(models, devices)]
        demand = self.instance.demand[models]
        if wide:
            home = [k for k, d in enumerate(devices) for _ in self.members.get(d, [])]
            chosen_sets = _cpsat_repack(demand, units, rooms, allowed, home)
        else:
            chosen_sets = best_repack(demand, units, rooms, allowed)
        if chosen_sets is None:
            return False
        placed = {int(i) for chosen_set in chosen_sets for i in models[chosen_set]}
        before = set(self.pool)
        self.pool = [i for i in self.pool + members if i not in placed]
        for d, chosen_set in zip(devices, chosen_sets):
            self._set_members(d, [int(i) for i in models[chosen_set]])
        return set(self.pool) != before


def _cpsat_repack(
    demand: np.ndarray, units: np.ndarray, rooms: np.ndarray, allowed: np.ndarray, home: list[int]
) -> list[np.ndarray] | None:
    """:func:`best_repack` for more devices, in CP-SAT, placing at least what the devices hold today
    (``home``: the device of each of the first models; the rest are the pool's), given as a hint;
    None when it finds nothing in its time."""
    from ortools.sat.python import cp_model  # imports pandas: most of a second a plan rarely needs

    model = cp_model.CpModel()
    x = {(k, d): model.NewBoolVar("") for k, d in zip(*np.nonzero(allowed))}
    for k in range(len(units)):
        model.AddAtMostOne(v for (j, _), v in x.items() if j == k)
    for d, room in enumerate(rooms):
        for r, limit in enumerate(room):
            model.Add(sum(int(demand[k, r]) * v for (k, e), v in x.items() if e == d) <= int(limit))
    placed = sum(int(units[k]) * v for (k, _), v in x.items())
    model.Add(placed >= int(units[: len(home)].sum()))
    for (k, d), v in x.items():
        model.AddHint(v, k < len(home) and home[k] == d)
    # Earlier devices weigh more, so that among equal repackings room gathers on the last ones.
    fill = sum((len(rooms) - d) * int(units[k] // FILL_DIVISOR) * v for (k, d), v in x.items())
    model.Maximize(placed * (len(rooms) ** 2 * SIZE_UNITS // FILL_DIVISOR + 1) + fill)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = WIDE_REPACK_SECONDS
    solver.parameters.num_workers = 1
    if solver.Solve(model) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return [np.array([k for (k, e), v in x.items() if e == d and solver.BooleanValue(v)], dtype=np.int64)
            for d in range(len(rooms))]


def best_repack(demand: np.ndarray, units: np.ndarray, rooms: np.ndarray, allowed: np.ndarray) -> list[np.ndarray]:
    """Exactly the most ``units`` of models that fit in one or two devices together (and, among
    equal totals, the most on the first device), by enumerating every subset of at most
    MAX_REPACK_MODELS models: a few milliseconds, where a CP-SAT call costs tens.

    ``demand`` [model, resource], ``rooms`` [device, resource], ``allowed`` [model, device];
    returns, per device, the positions of the models it gets.
    """
    n = len(units)
    sums, total = _subset_sums(demand), _subset_sums(units)
    masks = np.arange(1 << n)
    fits = [np.all(sums <= room, axis=1) for room in rooms]
    for k in np.flatnonzero(~allowed.all(axis=0)):
        fits[k] &= _subset_sums((~allowed[:, k]).astype(np.int64)) == 0
    if len(rooms) == 1:
        return [_members(int(np.argmax(np.where(fits[0], total, -1))), n)]
    second = np.where(fits[1], total, -1)
    for k in range(n):  # best_second[m]: the most units of a subset of m that fits the second device
        halves = second.reshape(-1, 2, 1 << k)
        np.maximum(halves[:, 1, :], halves[:, 0, :], out=halves[:, 1, :])
    value = np.where(fits[0], (total + second[masks ^ masks[-1]]) * (int(units.sum()) + 1) + total, -1)
    first = int(np.argmax(value))
    rest = masks[-1] ^ first
    within = (masks & ~rest) == 0
    other = int(np.argmax(np.where(within & fits[1], total, -1)))
    return [_members(first, n), _members(other, n)]


def _subset_sums(values: np.ndarray) -> np.ndarray:
    """Row m: the sum of the values whose bit is set in m."""
    sums = np.zeros((1,) + values.shape[1:], dtype=np.int64)
    for value in values:
        sums = np.concatenate([sums, sums + value])
    return sums


def _members(mask: int, n: int) -> np.ndarray:
    return np.array([k for k in range(n) if mask >> k & 1], dtype=np.int64)


def _pairs_and_singles(models: list[int]) -> np.ndarray:
    """Rows of two model indices: each model alone (padded with -1), then every pair."""
    items = np.array(models, dtype=np.int64)
    a, b = np.triu_indices(len(items), k=1)
    singles = np.stack([items, np.full(len(items), -1, dtype=np.int64)], axis=1)
    return np.vstack([singles, np.stack([items[a], items[b]], axis=1)]).reshape(-1, 2)


def _scalar_sizes(instance: Instance) -> np.ndarray:
    """Each model's share of the largest device, weighted by how scarce each resource is overall,
    so that the resource that bounds the fleet decides which repacking counts as progress."""
    bounded = np.where(instance.bounded, instance.capacity, 0)
    scale = np.maximum(bounded.max(axis=0), 1) if instance.n_devices else np.ones(len(instance.resources))
    relative = instance.demand / scale
    weight = relative.sum(axis=0) ** SCARCITY_POWER
    return relative @ (weight / max(weight.sum(), 1e-12))


def reduce_devices(
    instance: Instance, assignment: Assignment, target: int, deadline: Deadline,
    patience_seconds: float = math.inf, seed: int = 0,
) -> Assignment:
    """Close devices one at a time until ``target`` are open or ``deadline`` passes; returns the
    last assignment in which every model is placed.

    Gives up after ``patience_seconds`` without progress (a device closed, or the pool's size at a
    new low), so that a caller with an exact solver to follow hands it the rest of the time.
    """
    search = _Search(instance, assignment, np.random.default_rng(seed))
    best = assignment
    progress_at = timing.clock()
    while len(search.open) > target and progress_at < deadline.at and search.close_one():
        search.descend()
        lowest = search.size[search.pool].sum()
        stalled = 0
        while search.pool and (now := timing.clock()) < min(deadline.at, progress_at + patience_seconds):
            stalled += 1
            if search.repack_some(wide=stalled % WIDE_REPACK_EVERY == 0):
                search.descend()
                if search.size[search.pool].sum() < lowest - 1e-12:
                    lowest, progress_at, stalled = search.size[search.pool].sum(), now, 0
        if search.pool:
            break
        best = search.assignment()
        progress_at = timing.clock()
    return best
