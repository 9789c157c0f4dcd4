"""A plan per step of a demand series: the fleet grows and shrinks with demand, to the fewest
GPU-hours found, with at most a given number of moves between consecutive steps, each transition
one the move planner can order make-before-break (every intermediate state within limits).

Each model keeps one configuration at every step and has as many copies as the step needs, evened
out to a share of the move limit (:mod:`schedule_copies`); each step is then placed from the one
before (:mod:`schedule_placer`), its emptiest devices drained with the moves left.

Draining is what costs time. When the deadline comes near, the steps placed so far keep their
placements and the rest drain less: only onto devices that hold what they held and what arrives
together (on 1,000 models about 0.8x a full step's time, for 1.31x the bound rather than 1.29x),
or, with less time still, not at all (about 0.6x, 1.46x; surplus copies are still unloaded, new
ones loaded and devices over a limit relieved, each transition within the move limit and safe).
A step drains as far as the time left covers the steps after it draining one level less, their
time measured as the schedule goes. Should the deadline pass all the same, the steps left are
placed undrained rather than thrown away. Every step keeps the series plan's placement, which
serves them all with no move, only when the deadline has passed before the schedule starts, or no
transition fits within the move limit, or the schedule needs no fewer GPU-hours (a note says which).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from gpupack import timing
from gpupack.demand_series import DemandSeries
from gpupack.errors import InputError
from gpupack.scheduler.demand.schedule_copies import copies_within_moves, copy_costs, schedule_configs
from gpupack.scheduler.demand.schedule_placer import Drain, Move, Placer, ScheduledStep
from gpupack.scheduler.demand.series import Fleet, SeriesOption, SeriesPlan, step_bounds
from gpupack.scheduler.packing.problem import InfeasibleError
from gpupack.timing import Deadline
from gpupack.units import counted

__all__ = ["Move", "Schedule", "ScheduledStep", "SECONDS_PER_HOUR", "schedule_series"]

SECONDS_PER_HOUR = 3600.0
# Of the moves between two steps, the share copy counts may change by: the rest relieves devices
# whose copies serve more than before. A smaller share is tried when a transition needs more.
COPY_CHANGE_SHARES = (0.75, 0.4, 0.15)
NO_TIME_NOTE = "the time limit left no time to schedule: every step keeps the static plan"
# A step that drains one level less, against one that drains more, until one is timed: measured
# 0.63-0.82 on 1,000 models (20, 26 and 32 ms), with room to spare.
STEP_COST_SHARE = 0.9


@dataclass(frozen=True)
class Schedule:
    chosen: tuple[SeriesOption, ...]
    copies: np.ndarray  # [model, step]
    costs: tuple[np.ndarray, ...]  # per model: one copy's [resource, step] at the copies of each step
    steps: tuple[ScheduledStep, ...]
    fleet: Fleet
    step_seconds: float
    lower_bounds: np.ndarray  # [step]: devices no plan of that step can do without
    cut_short_at_step: int | None = None  # the first step the time limit drained less (0: no time, the static plan kept)
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
    static_hours = plan.device_count * series.steps * series.step_seconds / SECONDS_PER_HOUR
    for share in COPY_CHANGE_SHARES:
        try:
            schedule = _follow(series, chosen, fleet, bounds, max_moves_per_step, share, deadline)
        except InfeasibleError:
            continue
        if schedule.gpu_hours < static_hours:
            return schedule
        return _static(series, plan, fleet, bounds, "the static plan needs no more GPU-hours: every step keeps it")
    return _static(series, plan, fleet, bounds, f"no schedule within {counted(max_moves_per_step, 'move')} per step "
                                                "was found: every step keeps the static plan")


@dataclass
class _StepClock:
    """What a step has cost at each :class:`Drain` (from one step's start to the next's): the time
    to reserve for the steps left."""

    seconds: list[float] = field(default_factory=lambda: [0.0] * len(Drain))
    counts: list[int] = field(default_factory=lambda: [0] * len(Drain))

    def timed(self, drain: Drain, seconds: float) -> None:
        self.seconds[drain] += seconds
        self.counts[drain] += 1

    def per_step(self, drain: Drain) -> float:
        """Until a step is timed at ``drain``, it is taken to cost its measured share of a step
        that drains more, with room to spare."""
        if self.counts[drain]:
            return self.seconds[drain] / self.counts[drain]
        return STEP_COST_SHARE * self.per_step(Drain(drain + 1)) if drain < Drain.ALL else 0.0

    def affordable(self, deadline: Deadline, steps_left: int) -> Drain:
        """The most draining this step can do and still leave each step after it the next less
        (and one more such step's time to spare: the last step ends past its estimate as often as not)."""
        remaining = deadline.remaining()
        for drain in (Drain.ALL, Drain.EMPTIEST):
            if remaining > self.per_step(drain) + self.per_step(Drain(drain - 1)) * steps_left:
                return drain
        return Drain.NONE


def _follow(series: DemandSeries, chosen: Sequence[SeriesOption], fleet: Fleet, bounds: np.ndarray, limit: int,
            share: float, deadline: Deadline | None) -> Schedule:
    """Each step placed from the one before, drained as far as the ``deadline`` leaves the steps
    after it the time to drain a little less (once it has passed, not at all); raises
    :class:`InfeasibleError` when a step's transition cannot be ordered safely within ``limit`` moves."""
    copies = copies_within_moves(chosen, series.steps, max(1, int(limit * share)))
    placer = Placer(chosen, copy_costs(chosen, copies), fleet)
    steps = [ScheduledStep(placer.first(copies[:, 0]), ())]
    clock, cut_short_at, last = _StepClock(), None, None
    for t in range(1, series.steps):
        started = timing.clock()
        if last is not None:
            clock.timed(last, started - begun)
        begun, last = started, None
        drain = Drain.ALL if steps[-1].device_count > bounds[t] else Drain.NONE
        if drain and deadline is not None:
            # Steps that could be drained are timed, however far they are: the others cost less.
            last = drain = clock.affordable(deadline, series.steps - t)
            cut_short_at = t if cut_short_at is None and drain < Drain.ALL else cut_short_at
        steps.append(placer.next(steps[-1].devices, copies[:, t], t, limit, drain=drain))
    note = "" if cut_short_at is None else (f"the time limit cut the search short at step {cut_short_at}: from there "
                                            "on, devices are drained only as far as the time left allows")
    return Schedule(tuple(chosen), copies, tuple(placer.costs), tuple(steps), fleet, series.step_seconds, bounds,
                    cut_short_at_step=cut_short_at, note=note)


def _static(series: DemandSeries, plan: SeriesPlan, fleet: Fleet, bounds: np.ndarray, note: str,
            cut_short_at: int | None = None) -> Schedule:
    """Every step on the series plan's placement, which serves them all: no move at all."""
    copies = np.array([[o.copies] * series.steps for o in plan.chosen], dtype=int).reshape(len(plan.chosen), series.steps)
    steps = (ScheduledStep(plan.devices, ()),) * series.steps
    return Schedule(plan.chosen, copies, tuple(o.cost for o in plan.chosen), steps, fleet, series.step_seconds, bounds,
                    cut_short_at_step=cut_short_at, note=note)
