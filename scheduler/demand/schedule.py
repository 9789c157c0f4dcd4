"""A plan per step of a demand series: the fleet grows and shrinks with demand, to the fewest
GPU-hours found, with at most a given number of moves between consecutive steps, each transition
one the move planner can order make-before-break (every intermediate state within limits).

Each model keeps one configuration at every step, chosen for the schedule rather than for the
series' busiest hour: priced step by step against that step's busiest resource (the series plan's
choice competes). It has as many copies as the step needs (at least one: memory is paid whether or
not traffic comes). Copy counts are first evened out so that no transition changes more than a
share of the move limit (three quarters; less when a transition then needs more moves than are
left): copies a step will need are loaded ahead of it, copies a step no longer needs are unloaded
later. Then each step is placed from the one before: surplus copies leave the emptiest devices,
devices over a limit shed copies, new copies go to the fullest device they fit for the next steps
too (or a new one), and with the moves left the emptiest devices are drained and closed. During a
transition a copy counts at the larger of its two steps' costs, and the moves must have an order
in which every arrival fits beside what is still there (as the rebalancer's move planner orders
them). A drain is first held to what a device holds before and after together (any order then
works); then devices that copies leave are drained too, each kept only if the moves still order.

When the deadline comes before the last step, or no transition fits within the move limit, or the
schedule needs no fewer GPU-hours, every step keeps the series plan's placement, which serves them
all with no move (a note says which).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from gpupack.demand_series import DemandSeries
from gpupack.errors import InputError
from gpupack.scheduler.demand.series import (
    TOLERANCE, Fleet, SeriesOption, SeriesPlan, copy_cost, step_bounds, step_choices, step_volumes,
)
from gpupack.scheduler.packing.problem import InfeasibleError
from gpupack.timing import Deadline
from gpupack.units import counted

SECONDS_PER_HOUR = 3600.0
# Copies are placed where they fit this many steps ahead too, so that rising demand needs fewer moves.
LOOKAHEAD_STEPS = 2
# Of the moves between two steps, the share copy counts may change by: the rest relieves devices
# whose copies serve more than before. A smaller share is tried when a transition needs more.
COPY_CHANGE_SHARES = (0.75, 0.4, 0.15)
NO_TIME_NOTE = "the time limit left no time to schedule: every step keeps the static plan"
# Draining stops after this many devices could not be emptied: fuller ones will not be either.
DRAIN_TRIES = 5
# The powers of each step's resource prices tried when choosing the schedule's configurations.
STEP_PRICES = (1, 2)


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
    cut_short_at_step: int | None = None  # the step the time limit stopped the search at (the static plan kept)
    note: str = ""  # why the schedule is not the search's own (cut short, or the static plan kept)
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
                    max_moves_per_step: int, deadline: Deadline | None = None) -> Schedule:
    """The schedule with the fewest GPU-hours found by the ``deadline``. Copy counts are evened out
    to a share of the move limit, a smaller one when a step's transition needs more moves than are
    left. Every step keeps the series plan, which serves them all with no move, when no schedule is
    found in time or within the move limit, or none needs fewer GPU-hours."""
    if max_moves_per_step < 1:
        raise InputError("--max-moves-per-step: must be at least 1")
    fleet, devices = plan.fleet, plan.devices
    # No step needs more devices than the series plan's placement, which serves them all; twice
    # that leaves the greedy room to spare and keeps every device array short.
    pool = min(len(fleet.names), 2 * len({d for ds in devices for d in ds}) + 1) if devices else len(fleet.names)
    fleet = Fleet(fleet.names[:pool], fleet.room[:pool], fleet.baseline[:pool])
    bounds = step_bounds(options, fleet)
    if deadline is not None and deadline.passed():
        return _static(series, plan, fleet, bounds, NO_TIME_NOTE, 0)
    chosen = schedule_configs(options, fleet, plan.chosen)
    for share in COPY_CHANGE_SHARES:
        try:
            schedule = _follow(series, chosen, fleet, bounds, max_moves_per_step, share, deadline)
        except InfeasibleError:
            continue
        except _OutOfTime as e:
            return _static(series, plan, fleet, bounds, f"the time limit cut the search short at step {e.step}: every "
                                                        "step keeps the static plan", e.step)
        if schedule.gpu_hours < len({d for ds in devices for d in ds}) * series.steps * series.step_seconds / SECONDS_PER_HOUR:
            return schedule
        return _static(series, plan, fleet, bounds, "the static plan needs no more GPU-hours: every step keeps it")
    return _static(series, plan, fleet, bounds, f"no schedule within {counted(max_moves_per_step, 'move')} per step "
                                                "was found: every step keeps the static plan")


class _OutOfTime(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


def _follow(series: DemandSeries, chosen: Sequence[SeriesOption], fleet: Fleet, bounds: np.ndarray, limit: int,
            share: float, deadline: Deadline | None) -> Schedule:
    """Each step placed from the one before; raises :class:`InfeasibleError` when a step's
    transition cannot be ordered safely within ``limit`` moves, :class:`_OutOfTime` naming the
    step the ``deadline`` passed at."""
    copies = _copies_within_moves(chosen, series.steps, max(1, int(limit * share)))
    placer = _Placer(chosen, _costs(chosen, copies), fleet)
    steps = [ScheduledStep(placer.first(copies[:, 0]), ())]
    for t in range(1, series.steps):
        if deadline is not None and deadline.passed():
            raise _OutOfTime(t)
        steps.append(placer.next(steps[-1].devices, copies[:, t], t, limit, drain=steps[-1].device_count > bounds[t]))
    return Schedule(tuple(chosen), copies, tuple(placer.costs), tuple(steps), fleet, series.step_seconds, bounds)


def _static(series: DemandSeries, plan: SeriesPlan, fleet: Fleet, bounds: np.ndarray, note: str,
            cut_short_at: int | None = None) -> Schedule:
    """Every step on the series plan's placement, which serves them all: no move at all."""
    copies = np.array([[o.copies] * series.steps for o in plan.chosen], dtype=int).reshape(len(plan.chosen), series.steps)
    steps = (ScheduledStep(plan.devices, ()),) * series.steps
    return Schedule(plan.chosen, copies, tuple(o.cost for o in plan.chosen), steps, fleet, series.step_seconds, bounds,
                    cut_short_at_step=cut_short_at, note=note)


def schedule_configs(options: Sequence[Sequence[SeriesOption]], fleet: Fleet,
                     static: Sequence[SeriesOption]) -> tuple[SeriesOption, ...]:
    """One configuration per model for every step, priced step by step: in each step, each
    resource at its share of that step's busiest one (squared, or not), so that a model takes what
    is cheap when its devices are scarce and does not pay for the series' busiest hour at 3 a.m.
    The static plan's choice competes; the least volume summed over the steps' busiest resources wins."""
    volumes = step_volumes(step_choices(options), fleet)  # per model: [option, resource, step]
    least = sum((v.min(axis=0) for v in volumes), np.zeros(volumes[0].shape[1:]))
    top = np.maximum(least.max(axis=0, keepdims=True), 1e-12)
    picks = [[int(np.argmin((v * (least / top) ** k).sum(axis=(1, 2)))) for v in volumes] for k in STEP_PRICES]
    picks.append([next(i for i, o in enumerate(mine) if o.config.name == s.config.name) for mine, s in zip(options, static)])
    best = min(picks, key=lambda pick: float(sum(v[i] for v, i in zip(volumes, pick)).max(axis=0).sum()))
    return tuple(mine[i] for mine, i in zip(options, best))


def _costs(chosen: Sequence[SeriesOption], copies: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per model: one copy's [resource, step] cost at each step's copies."""
    return tuple(copy_cost(o.config, o.rates_per_copy * o.copies / copies[m]) for m, o in enumerate(chosen))


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
    def __init__(self, chosen: Sequence[SeriesOption], costs: Sequence[np.ndarray], fleet: Fleet,
                 lookahead: int = LOOKAHEAD_STEPS) -> None:
        self.chosen, self.costs, self.fleet, self.lookahead = chosen, costs, fleet, lookahead
        self.cost = np.stack(costs)  # [model, resource, step]
        self.opened = 0  # devices past this many have never held a copy
        self._passing_at: tuple[int, np.ndarray, np.ndarray, list, list[set[int]]] = (-1, np.zeros(0), np.zeros(0), [], [])
        self.slack = fleet.room + TOLERANCE * np.maximum(np.abs(fleet.room), 1.0)
        self._slack_list = self.slack.tolist()
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

    def next(self, before: Sequence[tuple[int, ...]], copies: np.ndarray, t: int, limit: int,
             drain: bool) -> ScheduledStep:
        """The step placed from the one before, its emptiest devices drained while moves are left
        (when ``drain``); without draining when the drained one's moves cannot be ordered safely
        within ``limit``. Not draining, a step that needs the same copies keeps the step before's
        placement while it fits."""
        if not drain and np.array_equal(copies, [len(ds) for ds in before]):
            _, held = self._passing(before, t)
            if np.all(held <= self.slack):
                return ScheduledStep(tuple(before), ())
        for draining in dict.fromkeys((drain, False)):
            devices = self._place(before, copies, t, limit, drain=draining)
            order = self._order(before, [set(ds) for ds in devices], t)
            if order is not None and len(order) <= limit:
                names = self.fleet.names
                return ScheduledStep(devices, tuple(Move(self.chosen[m].model, None if s is None else names[s],
                                                         None if a is None else names[a]) for m, s, a in order))
        raise InfeasibleError(f"step {t}: no transition within {counted(limit, 'move')} keeps every device "
                              "within its limits")

    def _order(self, before: Sequence[tuple[int, ...]], after: Sequence[set[int]], t: int,
               models: set[int] | None = None) -> list[tuple[int, int | None, int | None]] | None:
        """The moves (model, source, target) from ``before`` to ``after`` (a copy leaving and one
        arriving pair up as a move) in an order where every arrival fits beside what is still there,
        make-before-break, each copy at the larger of its two steps' costs; None when arrivals are
        left that cannot. ``models``: the only ones that may have changed, when known."""
        passing, pload = self._passing(before, t)
        pending: list[tuple[int, int | None, int | None]] = []
        for m in range(len(after)) if models is None else sorted(models):
            old, new = self._passing_at[4][m], after[m]
            if old == new:
                continue
            leaving, arriving = sorted(old - new), sorted(new - old)
            pending += [(m, s, a) for s, a in zip(leaving, arriving)]
            pending += [(m, s, None) for s in leaving[len(arriving):]] + [(m, None, a) for a in arriving[len(leaving):]]
        # Arrivals on devices that hold them all beside all they held go first, in any order; their
        # departures make room for the rest, ordered one at a time in plain floats.
        arrivals = [(m, a) for m, _, a in pending if a is not None]
        total = pload.copy()
        np.add.at(total, np.array([a for _, a in arrivals], dtype=np.int64),
                  passing[np.array([m for m, _ in arrivals], dtype=np.int64)])
        tight = set(np.flatnonzero(np.any(total > self.slack, axis=1)).tolist())
        order = [(m, s, a) for m, s, a in pending if a not in tight]
        pending = [(m, s, a) for m, s, a in pending if a in tight]
        for m, s, a in order:
            if a is not None:
                pload[a] += passing[m]
            if s is not None:
                pload[s] -= passing[m]
        involved = {d for _, source, target in pending for d in (source, target) if d is not None}
        held, cost, room = {d: pload[d].tolist() for d in involved}, self._passing_at[3], self._slack_list
        while pending:
            waiting: list[tuple[int, int | None, int | None]] = []
            for m, source, target in pending:
                if target is not None:
                    if any(h + c > r for h, c, r in zip(held[target], cost[m], room[target])):
                        waiting.append((m, source, target))
                        continue
                    held[target] = [h + c for h, c in zip(held[target], cost[m])]
                if source is not None:
                    held[source] = [h - c for h, c in zip(held[source], cost[m])]
                order.append((m, source, target))
            if len(waiting) == len(pending):
                return None
            pending = waiting
        return order

    def _place(self, before: Sequence[tuple[int, ...]], copies: np.ndarray, t: int, limit: int,
               drain: bool) -> tuple[tuple[int, ...], ...]:
        now, cost = self.cost[:, :, t], self._ahead(t)
        # During the transition a copy costs the larger of its two steps, and a device is held to
        # what it holds before and after together: then the arrivals fit in any order.
        passing, pload = self._passing(before, t)
        placed = [set(ds) for ds in before]
        load = self._load(placed, cost)
        moves, copies_added = 0, int(np.maximum(copies - np.array([len(ds) for ds in placed]), 0).sum())
        for m in np.flatnonzero(np.array([len(ds) for ds in placed]) > copies):  # surplus copies leave the emptiest devices
            ds = placed[m]
            for d in sorted(ds, key=lambda d: self._fullness(load[d]))[:len(ds) - copies[m]]:
                ds.discard(d)
                load[d] -= cost[m]
                moves += 1
        on: dict[int, set[int]] = {}
        for m, ds in enumerate(placed):
            for d in ds:
                on.setdefault(d, set()).add(m)
        # Devices over a limit now must shed copies; those over it in the next steps may, moves allowing.
        for loads, costs, must in ((self._load(placed, now), now, True), (load.copy(), cost, False)):
            for d in np.flatnonzero(np.any(loads > self.slack, axis=1)).tolist():
                for m in sorted(on.get(d, ()), key=lambda m: -self._fullness(costs[m])):
                    if not np.any(loads[d] > self.slack[d]) or (not must and moves >= limit - copies_added):
                        break
                    target = self._fit(load, pload, placed[m], cost[m], passing[m], exclude=d)
                    placed[m].discard(d)
                    placed[m].add(target)
                    on[d].discard(m)
                    on.setdefault(target, set()).add(m)
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
            moves_left = self._drain(placed, load, pload, cost, passing, limit - moves)
            # Then arrivals on devices that copies leave: kept device by device while the moves can be ordered.
            changed = {m for m, (old, new) in enumerate(zip(self._passing_at[4], placed)) if old != new}
            self._drain(placed, load, pload, cost, passing, moves_left,
                        safe=lambda trial, moved: self._within(before, trial, t, limit, changed | moved))
        return tuple(tuple(sorted(ds)) for ds in placed)

    def _within(self, before: Sequence[tuple[int, ...]], after: Sequence[set[int]], t: int, limit: int,
                models: set[int]) -> bool:
        order = self._order(before, after, t, models)
        return order is not None and len(order) <= limit

    def _drain(self, placed: list[set[int]], load: np.ndarray, pload: np.ndarray, cost: np.ndarray,
               passing: np.ndarray, moves_left: int,
               safe: Callable[[list[set[int]], set[int]], bool] | None = None) -> int:
        """Empty the emptiest devices onto the others while moves are left; returns the moves left.
        Each arrival fits beside what its device holds before and after together, or, with
        ``safe``, beside what it holds after, each drained device kept only when ``safe`` says the
        transition can still be carried out."""
        on: dict[int, list[int]] = {}
        for m, ds in enumerate(placed):
            for d in ds:
                on.setdefault(d, []).append(m)
        failed, drained = 0, set[int]()
        for d in sorted(on, key=lambda d: self._fullness(load[d])):
            here = [m for m in on[d] if d in placed[m]]
            if not here or len(here) > moves_left:
                continue
            if failed >= DRAIN_TRIES:
                break
            trial, ptrial, moved = load.copy(), pload.copy(), {}
            for m in sorted(here, key=lambda m: -self._fullness(cost[m])):
                target = self._fit(trial, None if safe else ptrial, placed[m], cost[m],
                                   None if safe else passing[m], exclude=d, only_open=True)
                if target < 0:
                    failed += 1
                    break
                moved[m] = target
                trial[d] -= cost[m]
                trial[target] += cost[m]
                ptrial[target] += passing[m]
            else:
                after = {m: (placed[m] - {d}) | {target} for m, target in moved.items()}
                if safe is not None and not safe([after.get(m, ds) for m, ds in enumerate(placed)], drained | set(moved)):
                    failed += 1
                    continue
                drained |= set(moved)
                for m, target in moved.items():
                    placed[m] = after[m]
                    on.setdefault(target, []).append(m)
                load[:], pload[:] = trial, ptrial
                moves_left -= len(here)
        return moves_left

    def _fit(self, load: np.ndarray, pload: np.ndarray | None, holding: set[int], cost: np.ndarray,
             passing: np.ndarray | None, exclude: int = -1, only_open: bool = False) -> int:
        """The fullest open device the copy fits on (and while arriving, at its passing cost); else
        the first empty one; -1 when ``only_open`` finds none. Devices are opened lowest first, so
        those past the highest opened yet are empty, and only the first of them is looked at."""
        n = min(len(load), self.opened + 1)
        load, slack = load[:n], self.slack[:n]
        busy = np.any(load > 0, axis=1)
        fits = np.all(load + cost <= slack, axis=1)
        if pload is not None and passing is not None:
            fits &= np.all(pload[:n] + passing <= slack, axis=1)
        fits[[d for d in holding if d < n]] = False
        if 0 <= exclude < n:
            fits[exclude] = False
        candidates = np.flatnonzero(fits & busy)
        if len(candidates):
            return int(candidates[np.argmax((load[candidates] / self.scale).max(axis=1))])
        if only_open:
            return -1
        empty = np.flatnonzero(fits & ~busy)
        if not len(empty):
            raise InfeasibleError(f"the {counted(len(self.fleet.names), 'device')} offered cannot hold a step's copies")
        self.opened = max(self.opened, int(empty[0]) + 1)
        return int(empty[0])

    def _passing(self, before: Sequence[tuple[int, ...]], t: int) -> tuple[np.ndarray, np.ndarray]:
        """[model, resource]: each copy's cost during the transition into step ``t`` (the larger of
        its two steps'), and [device, resource]: what ``before`` holds at it (a copy to change)."""
        if self._passing_at[0] != t:
            passing, sets = np.maximum(self.cost[:, :, t], self.cost[:, :, t - 1]), [set(ds) for ds in before]
            self._passing_at = (t, passing, self._load(sets, passing), passing.tolist(), sets)
        return self._passing_at[1], self._passing_at[2].copy()

    def _ahead(self, t: int) -> np.ndarray:
        """[model, resource]: each copy's cost over the next few steps, room kept for demand about to rise."""
        return self.cost[:, :, t:t + 1 + self.lookahead].max(axis=2)

    def _fullness(self, used: np.ndarray) -> float:
        return float((used / self.scale).max())

    def _load(self, placed: Sequence[set[int]], cost: np.ndarray) -> np.ndarray:
        load = np.zeros_like(self.fleet.room)
        models = np.repeat(np.arange(len(placed)), [len(ds) for ds in placed])
        np.add.at(load, np.fromiter(itertools.chain.from_iterable(placed), dtype=int, count=len(models)),
                  np.asarray(cost)[models])
        return load
