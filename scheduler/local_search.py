"""Local search that empties one device at a time, after Buljubašić and Vasquez's consistent
neighbourhood search for bin packing and vector packing (Computers & OR 66, 2016).

First-fit-decreasing leaves a few percent of devices unused on hard fleets (items that only fit
well in threes, a fleet bounded by utilisation rather than memory): reaching the lower bound
needs exchanges between devices that no greedy order makes. Here one device is closed and its
models go to a pool; the search then swaps up to two pool models with up to two models of an
open device, always keeping every open device within its limits, until the pool is empty. Each
step takes the exchange that moves the most (scalar) size out of the pool; a model just placed
is tabu for a few steps so that the search does not undo itself.

Models with replicas or in an anti-affinity group stay where they are: exchanging them would need
the distinct-device rules re-checked on both sides, and such fleets are small enough for CP-SAT.
"""

from __future__ import annotations

import time

import numpy as np

from gpupack.scheduler.heuristic import Assignment
from gpupack.scheduler.instance import Instance

MAX_POOL_PAIRS_FROM = 24  # pairs of pool models are formed among the largest this many
TABU_STEPS = (3, 12)  # a model placed from the pool stays for a random number of steps in this range


class _Search:
    """Open devices, their movable models, and the pool of models still to place."""

    def __init__(self, instance: Instance, assignment: Assignment, rng: np.random.Generator):
        self.instance, self.rng = instance, rng
        n = instance.n_models
        grouped = np.zeros(n, dtype=bool)
        for group in instance.groups:
            grouped[group] = True
        self.movable = (instance.replicas == 1) & ~grouped
        # One extra row (index -1) stands for "no model", so that pairs padded with -1 sum correctly.
        self.demand = np.vstack([instance.demand, np.zeros((1, len(instance.resources)), dtype=np.int64)])
        self.size = np.append(_scalar_sizes(instance), 0.0)
        self.allowed = np.vstack([instance.allowed, np.ones((1, instance.n_devices), dtype=bool)])
        self.tabu_until = np.zeros(n + 1, dtype=np.int64)
        self.load = np.zeros_like(instance.capacity)
        self.members: dict[int, list[int]] = {}
        self.fixed: dict[int, list[int]] = {}
        for i, devices in assignment.items():
            for d in devices:
                self.load[d] += instance.demand[i]
                (self.members if self.movable[i] else self.fixed).setdefault(d, []).append(i)
        self.open = set(self.members) | set(self.fixed)
        self.pool: list[int] = []
        self._exchanges: dict[int, np.ndarray] = {}

    def assignment(self) -> Assignment:
        result: Assignment = {i: [] for i in range(self.instance.n_models)}
        for by_device in (self.members, self.fixed):
            for d, models in by_device.items():
                for i in models:
                    result[i].append(d)
        return result

    def close_one(self) -> bool:
        """Close the open device whose movable models are smallest in all; False if none can close."""
        closable = [d for d in self.open if not self.fixed.get(d)]
        if not closable:
            return False
        d = min(closable, key=lambda d: (sum(self.size[i] for i in self.members[d]), -self.instance.cost[d]))
        self.pool = self.members.pop(d)
        self.load[d] = 0
        self.open.discard(d)
        self._exchanges.pop(d, None)
        return True

    def step(self, iteration: int) -> bool:
        """Make the best non-tabu exchange between the pool and one open device; False if none exists."""
        incoming = self._pool_sets()
        devices, outgoing = self._open_sets()
        in_demand = self.demand[incoming].sum(axis=1)
        room = self.instance.capacity[devices] - self.load[devices] + self.demand[outgoing].sum(axis=1)
        fits = np.all(in_demand[:, None, :] <= room[None, :, :], axis=2)
        fits &= (self.allowed[incoming[:, 0]] & self.allowed[incoming[:, 1]])[:, devices]
        fits &= ~(self.tabu_until[outgoing] > iteration).any(axis=1)[None, :]
        gain = self.size[incoming].sum(axis=1)[:, None] - self.size[outgoing].sum(axis=1)[None, :]
        fits &= np.abs(gain) > 1e-12  # an exchange of equal sizes changes nothing worth a step
        if not fits.any():
            return False
        score = np.where(fits, gain + self.rng.uniform(0, 1e-9, gain.shape), -np.inf)
        a, b = np.unravel_index(int(np.argmax(score)), score.shape)
        self._exchange(int(devices[b]), [int(i) for i in incoming[a] if i >= 0], [int(i) for i in outgoing[b] if i >= 0])
        self.tabu_until[[i for i in incoming[a] if i >= 0]] = iteration + self.rng.integers(*TABU_STEPS)
        return True

    def _exchange(self, d: int, placed: list[int], removed: list[int]) -> None:
        for i in removed:
            self.members[d].remove(i)
            self.load[d] -= self.instance.demand[i]
            self.pool.append(i)
        for i in placed:
            self.pool.remove(i)
            self.members.setdefault(d, []).append(i)
            self.load[d] += self.instance.demand[i]
        self._exchanges.pop(d, None)

    def _pool_sets(self) -> np.ndarray:
        """Single pool models and pairs among the largest, as rows of two indices (-1: none)."""
        pool = np.array(self.pool, dtype=np.int64)
        largest = pool[np.argsort(-self.size[pool])][:MAX_POOL_PAIRS_FROM]
        a, b = np.triu_indices(len(largest), k=1)
        singles = np.stack([pool, np.full(len(pool), -1)], axis=1)
        return np.vstack([singles, np.stack([largest[a], largest[b]], axis=1)])

    def _open_sets(self) -> tuple[np.ndarray, np.ndarray]:
        """Every open device's nothing, single models and pairs of models, with the device of each."""
        rows, devices = [], []
        for d in self.open:
            if d not in self._exchanges:
                self._exchanges[d] = _subsets_up_to_two(self.members.get(d, []))
            rows.append(self._exchanges[d])
            devices.append(np.full(len(self._exchanges[d]), d, dtype=np.int64))
        return np.concatenate(devices), np.concatenate(rows)


def _subsets_up_to_two(models: list[int]) -> np.ndarray:
    items = np.array(models, dtype=np.int64)
    a, b = np.triu_indices(len(items), k=1)
    return np.vstack([
        [[-1, -1]],
        np.stack([items, np.full(len(items), -1)], axis=1),
        np.stack([items[a], items[b]], axis=1),
    ]).astype(np.int64)


def _scalar_sizes(instance: Instance) -> np.ndarray:
    """Each model's share of the largest device, weighted by how scarce each resource is overall,
    so that the resource that bounds the fleet decides which exchanges count as progress."""
    bounded = np.where(instance.bounded, instance.capacity, 0)
    scale = np.maximum(bounded.max(axis=0), 1) if instance.n_devices else np.ones(len(instance.resources))
    relative = instance.demand / scale
    weight = relative.sum(axis=0)
    return relative @ (weight / max(weight.sum(), 1e-12))


def reduce_devices(
    instance: Instance, assignment: Assignment, target: int, deadline: float, seed: int = 0
) -> Assignment:
    """Close devices one at a time until ``target`` are open or ``deadline`` (time.perf_counter())
    passes; returns the last assignment in which every model is placed."""
    search = _Search(instance, assignment, np.random.default_rng(seed))
    best = assignment
    iteration = 0
    while len(search.open) > target and time.perf_counter() < deadline and search.close_one():
        while search.pool and time.perf_counter() < deadline and search.step(iteration):
            iteration += 1
        if search.pool:
            break
        best = search.assignment()
    return best
