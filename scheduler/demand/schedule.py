"""A plan per step of a demand series: the fleet grows and shrinks with demand, to the fewest
GPU-hours found, with at most a given number of moves between consecutive steps, each transition
one the move planner can order make-before-break (every intermediate state within limits).

Each model keeps the configuration of the series plan at every step and has as many copies as
the step needs (at least one: memory is paid whether or not traffic comes). Copy counts are first
evened out so that no transition changes more than three quarters of the move limit: copies a step will need
are loaded ahead of it, and copies a step no longer needs are unloaded later. Then each step is
placed from the one before: surplus copies leave the emptiest devices, devices over a limit shed
copies, new copies go to the fullest device they fit for the next steps too (or a new one), and
with the moves left the emptiest devices are drained and closed. A fresh packing of the step
competes, each of its devices on the old one it shares the most copies with. During a transition a
copy counts at the larger of its two steps' costs, on its old and new device alike, and the moves
must have an order in which every arrival fits (as the rebalancer's move planner orders them); the
candidate with the fewest devices that has one wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from gpupack.demand_series import DemandSeries
from gpupack.errors import InputError
from gpupack.scheduler.demand.series import TOLERANCE, Fleet, SeriesOption, SeriesPlan, copy_cost, step_bounds
from gpupack.scheduler.packing.problem import InfeasibleError
from gpupack.units import counted

SECONDS_PER_HOUR = 3600.0
# Copies are placed where they fit this many steps ahead too, so that rising demand needs fewer moves.
LOOKAHEAD_STEPS = 2
# Of the moves between two steps, the share copy counts may change by: the rest relieves devices
# whose copies serve more than before.
COPY_CHANGE_SHARE = 0.75
# Draining stops after this many devices could not be emptied: fuller ones will not be either.
DRAIN_TRIES = 5


@dataclass(frozen=True)
class Move:
    """One copy changing devices, as the rebalancer's steps do: ``source`` None loads a copy,
    ``target`` None unloads one."""

    model: str
    source: str | None
    target: str | None

    @property
    def kind(self) -> str:
        return "load" if self.source is None else "unload" if self.target is None else "move"


@dataclass(frozen=True)
class ScheduledStep:
    devices: tuple[tuple[int, ...], ...]  # per model: the fleet devices its copies sit on in this step
    moves: tuple[Move, ...]  # from the step before, in a safe order (none for the first step)

    @property
    def device_count(self) -> int:
        return len({d for ds in self.devices for d in ds})


@dataclass(frozen=True)
class Schedule:
    chosen: tuple[SeriesOption, ...]
    copies: np.ndarray  # [model, step]
    costs: tuple[np.ndarray, ...]  # per model: one copy's [resource, step] at the copies of each step
    steps: tuple[ScheduledStep, ...]
    fleet: Fleet
    step_seconds: float
    lower_bounds: np.ndarray  # [step]: devices no plan of that step can do without
    solve_seconds: float = 0.0
    seconds_by_phase: Mapping[str, float] = field(default_factory=dict)

    def rates_per_copy(self, model: int, step: int) -> float:
        return float(self.chosen[model].rates_per_copy[step] * self.chosen[model].copies / self.copies[model, step])

    @property
    def gpu_hours(self) -> float:
        return sum(s.device_count for s in self.steps) * self.step_seconds / SECONDS_PER_HOUR

    @property
    def bound_gpu_hours(self) -> float:
        return float(self.lower_bounds.sum()) * self.step_seconds / SECONDS_PER_HOUR


def schedule_series(series: DemandSeries, plan: SeriesPlan, options: Sequence[Sequence[SeriesOption]],
                    max_moves_per_step: int) -> Schedule:
    """Raises :class:`InfeasibleError` when a step cannot be placed within the move limit."""
    chosen, fleet, devices = plan.chosen, plan.fleet, plan.devices
    if max_moves_per_step < 1:
        raise InputError("--max-moves-per-step: must be at least 1")
    # No step needs more devices than the series plan's placement, which serves them all; twice
    # that leaves the greedy room to spare and keeps every device array short.
    pool = min(len(fleet.names), 2 * len({d for ds in devices for d in ds}) + 1) if devices else len(fleet.names)
    fleet = Fleet(fleet.names[:pool], fleet.room[:pool], fleet.baseline[:pool])
    copies = _copies_within_moves(chosen, series.steps, max(1, int(max_moves_per_step * COPY_CHANGE_SHARE)))
    costs = tuple(copy_cost(o.config, o.rates_per_copy * o.copies / copies[m]) for m, o in enumerate(chosen))
    placer = _Placer(chosen, costs, fleet)
    steps = [ScheduledStep(placer.first(copies[:, 0]), ())]
    for t in range(1, series.steps):
        steps.append(placer.next(steps[-1].devices, copies[:, t], t, max_moves_per_step))
    return Schedule(tuple(chosen), copies, costs, tuple(steps), fleet, series.step_seconds,
                    step_bounds(options, fleet))


def _copies_within_moves(chosen: Sequence[SeriesOption], steps: int, limit: int) -> np.ndarray:
    """[model, step]: each step's copies, raised where a transition would change more than ``limit``."""
    need = np.array([[max(1, math.ceil(float(r) * o.copies / o.capacity_per_second - 1e-9)) if o.capacity_per_second > 0
                      else 1 for r in o.rates_per_copy] for o in chosen], dtype=int).reshape(len(chosen), steps)
    need = np.minimum(need, np.array([o.copies for o in chosen])[:, None])
    for t in range(steps - 1, 0, -1):  # load ahead what a step adds beyond the limit
        _even_out(need, t, limit, rising=True)
    for t in range(1, steps):  # unload later what a step drops beyond the limit
        _even_out(need, t, limit, rising=False)
    return need


def _even_out(need: np.ndarray, t: int, limit: int, rising: bool) -> None:
    while np.abs(need[:, t] - need[:, t - 1]).sum() > limit:
        change = need[:, t] - need[:, t - 1] if rising else need[:, t - 1] - need[:, t]
        if change.max() <= 0:
            return
        m = int(np.argmax(change))
        if rising:
            need[m, t - 1] += 1
        else:
            need[m, t] += 1


class _Placer:
    def __init__(self, chosen: Sequence[SeriesOption], costs: Sequence[np.ndarray], fleet: Fleet) -> None:
        self.chosen, self.costs, self.fleet = chosen, costs, fleet
        self.slack = fleet.room + TOLERANCE * np.maximum(np.abs(fleet.room), 1.0)
        room = np.where(np.isfinite(fleet.room), fleet.room, 0.0).max(axis=0)
        self.scale = np.where(room > 0, room, np.inf)

    def first(self, copies: np.ndarray, t: int = 0) -> tuple[tuple[int, ...], ...]:
        """Step ``t`` packed on its own, biggest copies first, each on the fullest device it fits."""
        placed: list[set[int]] = [set() for _ in self.chosen]
        cost = self._ahead(t)
        order = sorted(range(len(self.chosen)), key=lambda m: -float((cost[m] / self.scale).max()))
        load = np.zeros_like(self.fleet.room)
        for m in order:
            for _ in range(copies[m]):
                d = self._fit(load, None, placed[m], cost[m], None)
                placed[m].add(d)
                load[d] += cost[m]
        return tuple(tuple(sorted(ds)) for ds in placed)

    def next(self, before: Sequence[tuple[int, ...]], copies: np.ndarray, t: int, limit: int) -> ScheduledStep:
        """The fewest devices among the candidates that can be ordered safely within ``limit``."""
        best: ScheduledStep | None = None
        for devices in (self._place(before, copies, t, limit, drain=True), self._repacked(before, copies, t),
                        self._place(before, copies, t, limit, drain=False)):
            order = self._order(before, devices, t)
            if order is None or len(order) > limit:
                continue
            step = ScheduledStep(devices, tuple(order))
            if best is None or (step.device_count, len(step.moves)) < (best.device_count, len(best.moves)):
                best = step
        if best is None:
            raise InfeasibleError(f"step {t}: no transition within {counted(limit, 'move')} keeps every device "
                                  "within its limits")
        return best

    def _order(self, before: Sequence[tuple[int, ...]], after: Sequence[tuple[int, ...]], t: int) -> list[Move] | None:
        """The moves from ``before`` to ``after`` (a copy leaving and one arriving pair up as a move)
        in an order where every arrival fits beside what is still there, make-before-break, each
        copy at the larger of its two steps' costs; None when arrivals are left that cannot."""
        passing = [np.maximum(c[:, t], c[:, t - 1]) for c in self.costs]
        pload = self._load([set(ds) for ds in before], passing)
        pending: list[tuple[int, int | None, int | None]] = []
        for m, (old, new) in enumerate(zip(before, after)):
            leaving, arriving = sorted(set(old) - set(new)), sorted(set(new) - set(old))
            pending += [(m, s, a) for s, a in zip(leaving, arriving)]
            pending += [(m, s, None) for s in leaving[len(arriving):]] + [(m, None, a) for a in arriving[len(leaving):]]
        order: list[Move] = []
        names = self.fleet.names
        while pending:
            waiting: list[tuple[int, int | None, int | None]] = []
            for m, source, target in pending:
                if target is not None:
                    if np.any(pload[target] + passing[m] > self.slack[target]):
                        waiting.append((m, source, target))
                        continue
                    pload[target] += passing[m]
                if source is not None:
                    pload[source] -= passing[m]
                order.append(Move(self.chosen[m].model, None if source is None else names[source],
                                  None if target is None else names[target]))
            if len(waiting) == len(pending):
                return None
            pending = waiting
        return order

    def _repacked(self, before: Sequence[tuple[int, ...]], copies: np.ndarray, t: int) -> tuple[tuple[int, ...], ...]:
        """The step packed afresh, each new device on the old one it shares the most copies with."""
        fresh = self.first(copies, t)
        old_on: dict[int, set[int]] = {}
        for m, ds in enumerate(before):
            for d in ds:
                old_on.setdefault(d, set()).add(m)
        new_on: dict[int, set[int]] = {}
        for m, ds in enumerate(fresh):
            for d in ds:
                new_on.setdefault(d, set()).add(m)
        pairs = sorted(((len(ms & old_on.get(o, set())), n, o) for n, ms in new_on.items() for o in old_on), reverse=True)
        relabel: dict[int, int] = {}
        taken: set[int] = set()
        for shared, n, o in pairs:
            if shared and n not in relabel and o not in taken:
                relabel[n] = o
                taken.add(o)
        spare = iter(d for d in range(len(self.fleet.names)) if d not in taken and d not in old_on)
        for n in sorted(new_on):
            if n not in relabel:
                relabel[n] = next(spare)
        return tuple(tuple(sorted(relabel[d] for d in ds)) for ds in fresh)

    def _place(self, before: Sequence[tuple[int, ...]], copies: np.ndarray, t: int, limit: int,
               drain: bool) -> tuple[tuple[int, ...], ...]:
        now, cost = [c[:, t] for c in self.costs], self._ahead(t)
        # During the transition a copy costs the larger of its two steps, and a device is held to
        # what it holds before and after together: then the arrivals fit in any order.
        passing = [np.maximum(c[:, t], c[:, t - 1]) for c in self.costs]
        placed = [set(ds) for ds in before]
        load, pload = self._load(placed, cost), self._load(placed, passing)
        moves, copies_added = 0, int(np.maximum(copies - np.array([len(ds) for ds in placed]), 0).sum())
        for m, ds in enumerate(placed):  # surplus copies leave the emptiest devices
            for d in sorted(ds, key=lambda d: self._fullness(load[d]))[:max(0, len(ds) - copies[m])]:
                ds.discard(d)
                load[d] -= cost[m]
                moves += 1
        # Devices over a limit now must shed copies; those over it in the next steps may, moves allowing.
        for loads, costs, must in ((self._load(placed, now), now, True), (load.copy(), cost, False)):
            for d in np.flatnonzero(np.any(loads > self.slack, axis=1)):
                for m in sorted((m for m, ds in enumerate(placed) if d in ds), key=lambda m: -self._fullness(costs[m])):
                    if not np.any(loads[d] > self.slack[d]) or (not must and moves >= limit - copies_added):
                        break
                    target = self._fit(load, pload, placed[m], cost[m], passing[m], exclude=int(d))
                    placed[m].discard(int(d))
                    placed[m].add(target)
                    for total, each in ((loads, costs), (load, cost)):
                        total[d] -= each[m]
                        total[target] += each[m]
                    pload[target] += passing[m]
                    moves += 1
        for m, ds in enumerate(placed):  # new copies: the fullest device they fit
            for _ in range(copies[m] - len(ds)):
                d = self._fit(load, pload, ds, cost[m], passing[m])
                ds.add(d)
                load[d] += cost[m]
                pload[d] += passing[m]
                moves += 1
        if drain:
            self._drain(placed, load, pload, cost, passing, limit - moves)
        return tuple(tuple(sorted(ds)) for ds in placed)

    def _drain(self, placed: list[set[int]], load: np.ndarray, pload: np.ndarray, cost: list[np.ndarray],
               passing: list[np.ndarray], moves_left: int) -> None:
        """Empty the emptiest devices onto the others while moves are left."""
        open_devices = sorted({d for ds in placed for d in ds}, key=lambda d: self._fullness(load[d]))
        failed = 0
        for d in open_devices:
            here = [m for m, ds in enumerate(placed) if d in ds]
            if not here or len(here) > moves_left:
                continue
            if failed >= DRAIN_TRIES:
                break
            trial, ptrial, trial_placed = load.copy(), pload.copy(), [set(ds) for ds in placed]
            for m in sorted(here, key=lambda m: -self._fullness(cost[m])):
                target = self._fit(trial, ptrial, trial_placed[m], cost[m], passing[m], exclude=d, only_open=True)
                if target < 0:
                    failed += 1
                    break
                trial_placed[m].discard(d)
                trial_placed[m].add(target)
                trial[d] -= cost[m]
                trial[target] += cost[m]
                ptrial[target] += passing[m]
            else:
                placed[:] = trial_placed
                load[:], pload[:] = trial, ptrial
                moves_left -= len(here)

    def _fit(self, load: np.ndarray, pload: np.ndarray | None, holding: set[int], cost: np.ndarray,
             passing: np.ndarray | None, exclude: int = -1, only_open: bool = False) -> int:
        """The fullest open device the copy fits on (and while arriving, at its passing cost); else
        the first empty one; -1 when ``only_open`` finds none."""
        busy = np.any(load > 0, axis=1)
        fits = np.all(load + cost <= self.slack, axis=1)
        if pload is not None and passing is not None:
            fits &= np.all(pload + passing <= self.slack, axis=1)
        fits[list(holding)] = False
        if exclude >= 0:
            fits[exclude] = False
        candidates = np.flatnonzero(fits & busy)
        if len(candidates):
            return int(candidates[np.argmax((load[candidates] / self.scale).max(axis=1))])
        if only_open:
            return -1
        empty = np.flatnonzero(fits & ~busy)
        if not len(empty):
            raise InfeasibleError(f"the {counted(len(self.fleet.names), 'device')} offered cannot hold a step's copies")
        return int(empty[0])

    def _ahead(self, t: int) -> list[np.ndarray]:
        """Each copy's cost over the next few steps: room kept for demand about to rise."""
        return [c[:, t:t + 1 + LOOKAHEAD_STEPS].max(axis=1) for c in self.costs]

    def _fullness(self, used: np.ndarray) -> float:
        return float((used / self.scale).max())

    def _load(self, placed: Sequence[set[int]], cost: Sequence[np.ndarray]) -> np.ndarray:
        load = np.zeros_like(self.fleet.room)
        for m, ds in enumerate(placed):
            for d in ds:
                load[d] += cost[m]
        return load
