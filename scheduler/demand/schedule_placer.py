"""Each step of a schedule placed from the one before: surplus copies leave the emptiest devices,
devices over a limit shed copies, new copies go to the fullest device they fit for the next steps
too (or a new one), and with the moves left the emptiest devices are drained and closed. During a
transition a copy counts at the larger of its two steps' costs, and the moves must have an order
in which every arrival fits beside what is still there (as the rebalancer's move planner orders
them). A drain is first held to what a device holds before and after together (any order then
works); then devices that copies leave are drained too, each arrival held to what its device holds
after at the larger of both steps' costs, preferably before and after too, so that the moves order
nearly always: they are ordered once for the whole step, and device by device only when they do
not (against drains each ordered on its own, 1.24x the bound rather than 1.29x on 1,000 models).
"""

from __future__ import annotations

import itertools
from enum import IntEnum
from typing import Callable, Mapping, Sequence

import numpy as np

from gpupack.scheduler.demand.schedule_moves import Change, Move, ScheduledStep, Transition, move_count
from gpupack.scheduler.demand.series import TOLERANCE, Fleet, SeriesOption
from gpupack.scheduler.packing.problem import InfeasibleError
from gpupack.units import counted

# Copies are placed where they fit this many steps ahead too, so that rising demand needs fewer moves:
# 1.26x the bound on 100 models and 1.22x on 1,000, against 1.28x and 1.24x with two, 1.37x with none.
LOOKAHEAD_STEPS = 1
# Draining stops after this many devices could not be emptied: fuller ones rarely will be. When time
# allows, a step tries more: 30 rather than 5 gives 1.229x the bound rather than 1.243x on 100 models
# and 1.184x rather than 1.190x on 1,000, for about 1.2x the time a step (bench/time_plans.py).
# Draining deep, surplus copies leave the devices with the fewest copies first, which a drain then
# closes with the fewest moves (over eight seeds of 100 models, 1.168x the bound rather than 1.176x).
# Those devices tried first by the drain itself made no difference once devices over a limit only at
# the next steps were no longer relieved ahead (1.170x); before, 1.189x rather than 1.204x.
DRAIN_TRIES, DEEP_DRAIN_TRIES = 5, 30


class Drain(IntEnum):
    """How far a step drains devices: the cheaper, the fewer GPU-hours saved."""

    NONE = 0
    EMPTIEST = 1  # the emptiest devices, onto devices that hold what they held and what arrives together
    ALL = 2  # then also onto devices copies are leaving, each drain kept only if the moves still order
    DEEP = 3  # as ALL, trying more devices, and making room by moving a smaller copy to a third device


class Placer:
    """Places one step after another for a fixed choice of configurations and copies per step."""

    def __init__(self, chosen: Sequence[SeriesOption], costs: Sequence[np.ndarray], fleet: Fleet,
                 lookahead: int = LOOKAHEAD_STEPS) -> None:
        self.chosen, self.costs, self.fleet, self.lookahead = chosen, costs, fleet, lookahead
        self.cost = np.stack(costs)  # [model, resource, step]
        self.opened = 0  # devices past this many have never held a copy
        self._into: tuple[int, Transition | None] = (-1, None)  # the transition last worked out, into which step
        self.slack = fleet.room + TOLERANCE * np.maximum(np.abs(fleet.room), 1.0)
        room = np.where(np.isfinite(fleet.room), fleet.room, 0.0).max(axis=0)
        self.scale = np.where(room > 0, room, np.inf)

    def first(self, copies: np.ndarray, t: int = 0) -> tuple[tuple[int, ...], ...]:
        """Step ``t`` packed on its own, the models with the most copies first (they need as many
        devices), then the biggest copies, each on the fullest device it fits."""
        placed: list[set[int]] = [set() for _ in self.chosen]
        cost = self._ahead(t)
        order = sorted(range(len(self.chosen)), key=lambda m: (-int(copies[m]), -float((cost[m] / self.scale).max())))
        load = np.zeros_like(self.fleet.room)
        self._fit_all([m for m in order for _ in range(copies[m])], placed, load, None, cost, None)
        return tuple(tuple(sorted(ds)) for ds in placed)

    def next(self, before: Sequence[tuple[int, ...]], copies: np.ndarray, t: int, limit: int,
             drain: Drain) -> ScheduledStep:
        """The step placed from the one before, its emptiest devices drained as far as ``drain``
        says while moves are left; without draining when the drained one's moves cannot be ordered
        safely within ``limit``. Not draining, a step that needs the same copies keeps the step
        before's placement while it fits. ``before`` need not be one this placer made."""
        self.opened = max(self.opened, 1 + max((d for ds in before for d in ds), default=-1))
        into = self._transition(before, t)
        if not drain and np.array_equal(copies, [len(ds) for ds in before]) and np.all(into.held <= self.slack):
            return ScheduledStep(tuple(before), ())
        for draining in dict.fromkeys((drain, Drain.NONE)):
            devices, order = self._place(before, copies, t, limit, drain=draining)
            if order is None:
                order = into.order(into.all_changes(devices))
            if order is not None and len(order) <= limit:
                names = self.fleet.names
                return ScheduledStep(devices, tuple(Move(self.chosen[m].model, None if s is None else names[s],
                                                         None if a is None else names[a]) for m, s, a in order))
        raise InfeasibleError(f"step {t}: no transition within {counted(limit, 'move')} keeps every device "
                              "within its limits")

    def _place(self, before: Sequence[tuple[int, ...]], copies: np.ndarray, t: int, limit: int,
               drain: Drain) -> tuple[tuple[tuple[int, ...], ...], list[Change] | None]:
        """The step's devices per model, and their moves in a safe order within ``limit`` when
        already worked out."""
        now, cost = self.cost[:, :, t], self._ahead(t)
        # During the transition a copy costs the larger of its two steps, and a device is held to
        # what it holds before and after together: then the arrivals fit in any order.
        into = self._transition(before, t)
        passing, pload = into.passing, into.held.copy()
        placed = [set(ds) for ds in before]
        load = self._load(placed, cost)
        moves = 0
        # Surplus copies leave the emptiest devices; draining deep, those with the fewest copies
        # first, which a drain then closes with the fewest moves.
        held = np.bincount(np.fromiter(itertools.chain.from_iterable(placed), dtype=np.int64), minlength=len(load))
        deep = drain >= Drain.DEEP
        for m in np.flatnonzero(np.array([len(ds) for ds in placed]) > copies):
            full = dict(zip(placed[m], self._fullness(load[list(placed[m])])))
            for d in sorted(placed[m], key=lambda d: (held[d] if deep else 0, full[d], d))[:len(placed[m]) - copies[m]]:
                placed[m].discard(d)
                load[d] -= cost[m]
                held[d] -= 1
                moves += 1
        on: dict[int, set[int]] = {}
        for m, ds in enumerate(placed):
            for d in ds:
                on.setdefault(d, set()).add(m)
        # Devices over a limit now shed copies, the biggest first. Those over it only at the next
        # steps' costs are left for then: relieving them ahead took a third of the moves that were
        # not loads or unloads, which drains close more devices with (100 models, eight seeds:
        # 1.170x the bound rather than 1.180x; 1,000 models: 5.3 s rather than 6.4 s).
        loads, size = self._load(placed, now), self._fullness(now)
        for d in np.flatnonzero(np.any(loads > self.slack, axis=1)).tolist():
            for m in sorted(on.get(d, ()), key=lambda m: -size[m]):
                if not np.any(loads[d] > self.slack[d]):
                    break
                target = self._fit(load, pload, placed[m], cost[m], passing[m], exclude=d)
                placed[m].discard(d)
                placed[m].add(target)
                on[d].discard(m)
                on.setdefault(target, set()).add(m)
                for total, each in ((loads, now), (load, cost)):
                    total[d] -= each[m]
                    total[target] += each[m]
                pload[target] += passing[m]
                moves += 1
        # New copies of the models with the most copies first, then the biggest, as a step packed afresh
        # (eight seeds of 100 models: 1.165x the bound rather than 1.168x; four more, 1.160x rather than 1.162x).
        held_now = np.fromiter(map(len, placed), dtype=np.int64, count=len(placed))
        adding: np.ndarray = np.asarray(copies) - held_now
        share = (cost / self.scale).sum(axis=1).tolist()
        new = sorted(np.repeat(np.arange(len(placed)), np.maximum(adding, 0)).tolist(),
                     key=lambda m: (-int(copies[m]), -share[m]))
        self._fit_all(new, placed, load, pload, cost, passing)
        moves += len(new)
        if drain >= Drain.EMPTIEST:
            moves_left = self._drain(into.before, placed, load, pload, cost, passing, limit - moves, deep)
        if drain >= Drain.ALL:
            # Then arrivals on devices that copies leave, each beside what its device holds after at
            # the larger of both steps' costs (without, one drain in five could not be ordered),
            # preferably beside all it holds before and after: the moves then order all but one time
            # in a thousand, at once; else the step drains again, each drain kept while they order.
            both = np.maximum(cost, passing)
            drained = [set(ds) for ds in placed]
            self._drain(into.before, drained, self._load(drained, both), pload.copy(), both, passing, moves_left, deep,
                        held_first=True, eject=deep)
            order = into.order(into.all_changes(drained))
            if order is not None and len(order) <= limit:
                return _devices(before, into.before, drained), order
            known = {m: into.changes(m, ds) for m, (old, ds) in enumerate(zip(into.before, placed)) if old != ds}
            self._drain(into.before, placed, self._load(placed, both), pload, both, passing, moves_left, deep,
                        held_first=True,
                        safe=lambda moved: into.within(limit, known, moved))
        return _devices(before, into.before, placed), None

    def _drain(self, before: Sequence[set[int]], placed: list[set[int]], load: np.ndarray, pload: np.ndarray,
               cost: np.ndarray, passing: np.ndarray, moves_left: int, deep: bool, held_first: bool = False,
               eject: bool = False, safe: Callable[[Mapping[int, set[int]]], bool] | None = None) -> int:
        """Empty the emptiest devices onto the others while moves are left, until DRAIN_TRIES
        (``deep``: DEEP_DRAIN_TRIES) could not be; returns the moves left. A drain spends what it
        adds to the moves from ``before`` (per model, its devices in the step before): a copy
        loaded or moved in this step goes elsewhere at no move of its own (counted one move a copy,
        100 models over eight seeds needed 1.165x the bound rather than 1.158x). Each arrival fits
        beside what its device holds before and after together, or, with ``held_first``, beside
        what it holds after (preferably both); with ``safe``, a drain is kept only when ``safe``
        says the transition with the copies it moves (model: devices after) can be carried out."""
        on: dict[int, list[int]] = {}
        for m, ds in enumerate(placed):
            for d in ds:
                on.setdefault(d, []).append(m)
        failed, tries = 0, DEEP_DRAIN_TRIES if deep else DRAIN_TRIES
        full, size = self._fullness(load), self._fullness(cost)
        for d in sorted(on, key=lambda d: full[d]):
            here = [m for m in on[d] if d in placed[m]]
            held_before = sum(d in before[m] for m in here)  # the copies whose leaving is a move of its own
            if not here or held_before > moves_left:
                continue
            if failed >= tries:
                break
            trial, ptrial = load.copy(), pload.copy()
            leaving = sorted(here, key=lambda m: -size[m])
            targets = self._fit_each(leaving, placed, trial, ptrial, cost, passing, exclude=d, only_open=True,
                                     prefer_held=held_first)
            ejected: dict[int, tuple[int, int]] = {}
            if targets is None and eject:
                trial, ptrial = load.copy(), pload.copy()
                targets = self._fit_ejecting(leaving, placed, on, trial, cost, d, ejected, moves_left - held_before)
            if targets is None:
                failed += 1
            else:
                moved = dict(zip(leaving, targets))
                trial[d] -= cost[leaving].sum(axis=0)
                after = {m: (placed[m] - {d}) | {target} for m, target in moved.items()}
                for y, (b, c) in ejected.items():
                    after[y] = (after.get(y, placed[y]) - {b}) | {c}
                spent = sum(move_count(before[m], ds) - move_count(before[m], placed[m]) for m, ds in after.items())
                if spent > moves_left:
                    continue
                if safe is not None and not safe(after):
                    failed += 1
                    continue
                for m, target in moved.items():
                    on.setdefault(target, []).append(m)
                for y, (b, c) in ejected.items():
                    on.setdefault(c, []).append(y)
                for m, ds in after.items():
                    placed[m] = ds
                load[:], pload[:] = trial, ptrial
                moves_left -= spent
        return moves_left

    def _fit_ejecting(self, leaving: Sequence[int], placed: list[set[int]], on: Mapping[int, list[int]],
                      load: np.ndarray, cost: np.ndarray, drained: int, ejected: dict[int, tuple[int, int]],
                      spare_moves: int) -> list[int] | None:
        """Where each of ``leaving`` goes: the fullest open device it fits, else the fullest where it
        fits once a smaller copy there moves to a third device (recorded in ``ejected``: model -> (from,
        to)), at most ``spare_moves`` of those, none of a model leaving (its copies stay on distinct
        devices); None when one goes nowhere. A drain's biggest copy is what fits nowhere nine times
        in ten (moving one more copy for it: 100 models, 1.176x the bound -> 1.151x with moves to spare)."""
        targets: list[int] = []
        picked: dict[int, set[int]] = {}
        size = (cost / self.scale).max(axis=1)
        busy_devices = [b for b in on if b != drained]
        for m in leaving:
            taken = placed[m] | picked.get(m, set())
            d = self._fit(load, None, taken, cost[m], None, exclude=drained, only_open=True)
            if d < 0:
                if spare_moves - len(ejected) < 1:
                    return None
                for b in sorted(busy_devices, key=lambda b: -(load[b] / self.scale).max()):
                    if b in taken:
                        continue
                    need = load[b] + cost[m] - self.slack[b]
                    for y in on[b]:
                        if y in leaving or y in ejected or b not in placed[y] or size[y] >= size[m]:
                            continue
                        if np.any(cost[y] < need):
                            continue
                        load[b] += cost[m] - cost[y]
                        c = self._fit(load, None, placed[y] | {drained}, cost[y], None, exclude=b, only_open=True)
                        if c >= 0:
                            load[c] += cost[y]
                            ejected[y] = (b, c)
                            d = b
                            break
                        load[b] -= cost[m] - cost[y]
                    if d >= 0:
                        break
                if d < 0:
                    return None
                load[d] -= cost[m]  # added back below
            targets.append(d)
            picked.setdefault(m, set()).add(d)
            load[d] += cost[m]
        return targets

    def _fit_all(self, models: Sequence[int], placed: list[set[int]], load: np.ndarray, pload: np.ndarray | None,
                 cost: np.ndarray, passing: np.ndarray | None) -> None:
        """One new copy of each of ``models``, in turn, on the fullest open device it fits (else the
        first empty one), added to ``placed`` and the loads."""
        for m, d in zip(models, self._fit_each(models, placed, load, pload, cost, passing) or ()):
            placed[m].add(d)

    def _fit_each(self, models: Sequence[int], holding: Sequence[set[int]], load: np.ndarray, pload: np.ndarray | None,
                  cost: np.ndarray, passing: np.ndarray | None, exclude: int = -1,
                  only_open: bool = False, prefer_held: bool = False) -> list[int] | None:
        """Where one copy of each of ``models`` goes, in turn, as :meth:`_fit` places one, each
        added to the loads; None when ``only_open`` finds no open device for one. With
        ``prefer_held``, a copy need not fit beside ``pload`` (what the device holds before and
        after, at ``passing`` costs), but goes where it does if it can: such arrivals fit in any
        order. Which devices each copy fits is worked out for all at once, then only for the device
        that changed: a step loads hundreds of copies on a fleet of a thousand models, and drains
        try devices by the dozen."""
        if not models:
            return []
        ms = np.array(models, dtype=np.int64)
        # Each copy opens at most one device: those past these are never looked at.
        seen = min(len(load), self.opened + 1 + (0 if only_open else len(models)))
        slack = self.slack[:seen]
        wanted = cost[ms]
        fits = (load[None, :seen] + wanted[:, None] <= slack[None]).all(2)
        if pload is not None and passing is not None:
            wanted_passing = passing[ms]
            if not prefer_held:
                fits &= (pload[None, :seen] + wanted_passing[:, None] <= slack[None]).all(2)
        if 0 <= exclude < seen:
            fits[:, exclude] = False
        full = self._best_fit(load[:seen])
        busy = (load[:seen] > 0).any(1)
        chosen: list[int] = []
        picked: dict[int, list[int]] = {}  # a model's copies go on distinct devices
        for k, m in enumerate(models):
            n = min(len(load), self.opened + 1)
            row = fits[k, :n].copy()
            for d in itertools.chain(holding[m], picked.get(m, ())):
                if d < n:
                    row[d] = False
            open_fits = row & busy[:n]
            if open_fits.any():
                score = full[:n]
                if pload is not None and passing is not None and prefer_held:
                    # Fullness is at most 1 (and its tolerance): a device held before and after comes first.
                    score = score + 2.0 * (pload[:n] + passing[m] <= slack[:n]).all(1)
                d = int(np.where(open_fits, score, -np.inf).argmax())
            elif only_open:
                return None
            else:
                empty = (row & ~busy[:n]).nonzero()[0]
                if not len(empty):
                    raise InfeasibleError(f"the {counted(len(self.fleet.names), 'device')} offered cannot hold a "
                                          "step's copies")
                d = int(empty[0])
                self.opened = max(self.opened, d + 1)
            chosen.append(d)
            picked.setdefault(m, []).append(d)
            load[d] += cost[m]
            full[d], busy[d] = self._best_fit(load[d][None])[0], (load[d] > 0).any()
            fits[k + 1:, d] = (load[d] + wanted[k + 1:] <= slack[d]).all(1)
            if pload is not None and passing is not None:
                pload[d] += passing[m]
                if not prefer_held:
                    fits[k + 1:, d] &= (pload[d] + wanted_passing[k + 1:] <= slack[d]).all(1)
        return chosen

    def _fit(self, load: np.ndarray, pload: np.ndarray | None, holding: set[int], cost: np.ndarray,
             passing: np.ndarray | None, exclude: int = -1, only_open: bool = False) -> int:
        """The fullest open device the copy fits on (and while arriving, at its passing cost); else
        the first empty one; -1 when ``only_open`` finds none. Devices are opened lowest first, so
        those past the highest opened yet are empty, and only the first of them is looked at."""
        n = min(len(load), self.opened + 1)
        load, slack = load[:n], self.slack[:n]
        busy = (load > 0).any(1)
        fits = (load + cost <= slack).all(1)
        if pload is not None and passing is not None:
            fits &= (pload[:n] + passing <= slack).all(1)
        for d in holding:
            if d < n:
                fits[d] = False
        if 0 <= exclude < n:
            fits[exclude] = False
        candidates = (fits & busy).nonzero()[0]
        if len(candidates):
            return int(candidates[self._best_fit(load[candidates]).argmax()])
        if only_open:
            return -1
        empty = (fits & ~busy).nonzero()[0]
        if not len(empty):
            raise InfeasibleError(f"the {counted(len(self.fleet.names), 'device')} offered cannot hold a step's copies")
        self.opened = max(self.opened, int(empty[0]) + 1)
        return int(empty[0])

    def _transition(self, before: Sequence[tuple[int, ...]], t: int) -> Transition:
        """The transition from ``before`` into step ``t``, worked out once for the step."""
        step, into = self._into
        if step != t or into is None:
            passing, sets = np.maximum(self.cost[:, :, t], self.cost[:, :, t - 1]), [set(ds) for ds in before]
            into = Transition(sets, passing, self._load(sets, passing), self.slack)
            self._into = (t, into)
        return into

    def _ahead(self, t: int) -> np.ndarray:
        """[model, resource]: each copy's cost over the next few steps, room kept for demand about to rise."""
        return self.cost[:, :, t:t + 1 + self.lookahead].max(axis=2)

    def _best_fit(self, load: np.ndarray) -> np.ndarray:
        """[device]: how full each device is for best fit, the sum of its resources' shares of the
        largest device: a device full in one resource and empty in another is less full than one
        full in both (against the busiest resource's share, 1.209x the bound rather than 1.215x on
        100 models over three seeds, 1.161x rather than 1.163x on 1,000)."""
        return (load / self.scale).sum(axis=-1)

    def _fullness(self, used: np.ndarray) -> list[float]:
        """[row]: each row's busiest resource as a share of the largest device (a list, to read one at a time)."""
        return (used / self.scale).max(axis=-1).tolist()

    def _load(self, placed: Sequence[set[int]], cost: np.ndarray) -> np.ndarray:
        load = np.zeros_like(self.fleet.room)
        models = np.repeat(np.arange(len(placed)), [len(ds) for ds in placed])
        np.add.at(load, np.fromiter(itertools.chain.from_iterable(placed), dtype=int, count=len(models)),
                  np.asarray(cost)[models])
        return load


def _devices(before: Sequence[tuple[int, ...]], before_sets: Sequence[set[int]],
             placed: Sequence[set[int]]) -> tuple[tuple[int, ...], ...]:
    """Per model its devices in order, the step before's where they are the same: most models stay
    put, and sorting every model's devices anew each step took 7% of a 1,000-model schedule (profiled)."""
    return tuple(old if ds == was else tuple(sorted(ds)) for old, was, ds in zip(before, before_sets, placed))
