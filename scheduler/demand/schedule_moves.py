"""The moves between two steps of a schedule, and an order that carries them out make-before-break:
during a transition each copy counts at the larger of its two steps' costs, and every arrival must
fit beside what its device still holds (as the rebalancer's move planner orders them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

Change = tuple[int, int | None, int | None]  # (model, source, target) as indices: a load, an unload or a move


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


def move_count(before: set[int], after: set[int]) -> int:
    """The moves that take a model's copies from ``before`` to ``after`` (devices), as
    :meth:`Transition.changes` lists them: a copy leaving and one arriving pair up as one move."""
    return max(len(before - after), len(after - before))


class Transition:
    """From one step's placement (``before``, per model its devices) into the next: each copy's
    cost while it passes (``passing`` [model, resource], the larger of its two steps'), what each
    device holds of ``before`` at those costs (``held`` [device, resource]), and each device's
    ``slack`` [device, resource] (its room and tolerance)."""

    def __init__(self, before: Sequence[set[int]], passing: np.ndarray, held: np.ndarray, slack: np.ndarray) -> None:
        self.before, self.passing, self.held, self.slack = before, passing, held, slack

    def changes(self, m: int, after: set[int]) -> list[Change]:
        """Model ``m``'s moves into ``after`` (its devices): a copy leaving and one arriving pair up as a move."""
        old = self.before[m]
        if old == after:
            return []
        leaving, arriving = sorted(old - after), sorted(after - old)
        return ([(m, s, a) for s, a in zip(leaving, arriving)] + [(m, s, None) for s in leaving[len(arriving):]]
                + [(m, None, a) for a in arriving[len(leaving):]])

    def all_changes(self, after: Sequence[set[int] | tuple[int, ...]]) -> list[Change]:
        """Every model's moves into ``after``."""
        return [change for m, ds in enumerate(after) for change in self.changes(m, set(ds))]

    def order(self, changes: Sequence[Change]) -> list[Change] | None:
        """The ``changes`` in an order where every arrival fits beside what its device still
        holds; None when arrivals are left that cannot."""
        passing, pload, slack = self.passing, self.held.copy(), self.slack
        pending = list(changes)
        # Arrivals on devices that hold them all beside all they held go first, in any order; their
        # departures make room for the rest, ordered one at a time in plain floats.
        arrivals = [(m, a) for m, _, a in pending if a is not None]
        total = pload.copy()
        np.add.at(total, np.array([a for _, a in arrivals], dtype=np.int64),
                  passing[np.array([m for m, _ in arrivals], dtype=np.int64)])
        tight = set(np.flatnonzero(np.any(total > slack, axis=1)).tolist())
        order = [(m, s, a) for m, s, a in pending if a not in tight]
        pending = [(m, s, a) for m, s, a in pending if a in tight]
        if not pending:
            return order
        for index, sign in ((2, 1.0), (1, -1.0)):
            done = [(move[0], move[index]) for move in order if move[index] is not None]
            if done:
                np.add.at(pload, np.array([d for _, d in done], dtype=np.int64),
                          sign * passing[np.array([m for m, _ in done], dtype=np.int64)])
        involved = sorted({d for _, source, target in pending for d in (source, target) if d is not None})
        models = sorted({m for m, _, _ in pending})
        # Only the rows the pending moves touch, as lists: converting every model's and device's took
        # a tenth of a 1,000-model schedule (profiled).
        held = dict(zip(involved, pload[involved].tolist()))
        room = dict(zip(involved, slack[involved].tolist()))
        cost = dict(zip(models, passing[models].tolist()))
        while pending:
            waiting: list[Change] = []
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

    def within(self, limit: int, known: dict[int, list[Change]], moved: Mapping[int, set[int]]) -> bool:
        """Whether the transition with the models ``known`` to change (their moves) and those
        ``moved`` (where to) can be ordered safely within ``limit``; if so, the ``moved`` become known."""
        trial = {**known, **{m: self.changes(m, ds) for m, ds in moved.items()}}
        order = self.order([change for m in sorted(trial) for change in trial[m]])
        if order is None or len(order) > limit:
            return False
        known.update(trial)
        return True
