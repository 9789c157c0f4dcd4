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
time measured as the schedule goes (every step is timed, at the level it ran) and counted with a
margin. Undrained steps are the floor: the schedule ends by its deadline only if the time left
covers them all. As soon as it does not (known once an undrained step is timed, on a machine too
busy for the limit), the schedule starts again with runs of steps planned as one: each plan serves the
busiest of its steps, the fleet changes only between plans, there are 0.6 as many plans as the time
left covers, and steps are merged where that adds the fewest device-steps (:func:`_runs`; on 1,000
models, 107 plans of 168 steps: 1.37x the bound, where plans of 2 steps each gave 1.5x). Every step
keeps the series plan's placement, which serves them all with no move, when not even two plans fit
in the time left, or no transition fits within the move limit, or the schedule needs no fewer
GPU-hours (a note says which). With twice the schedule's time still left (on 100
models; not on 1,000 within 10 s), it is planned again with drains that go on past more devices
that could not be emptied and that make room by moving a smaller copy aside (1.225x the bound
rather than 1.243x), and the one with fewer GPU-hours is kept.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from gpupack import timing
from gpupack.demand_series import DemandSeries
from gpupack.errors import InputError
from gpupack.scheduler.demand.schedule_copies import copies_within_moves, copy_costs, schedule_configs
from gpupack.scheduler.demand.schedule_moves import Move, ScheduledStep
from gpupack.scheduler.demand.schedule_placer import Drain, Placer
from gpupack.scheduler.demand.series import (Fleet, SeriesOption, SeriesPlan, step_bounds, step_choices,
                                             step_volumes)
from gpupack.scheduler.packing.problem import InfeasibleError
from gpupack.timing import Deadline
from gpupack.units import counted

__all__ = ["Move", "Schedule", "ScheduledStep", "SECONDS_PER_HOUR", "schedule_series"]

SECONDS_PER_HOUR = 3600.0
# Of the moves between two steps, the share copy counts may change by: the rest relieves devices
# whose copies serve more than before. A transition that needs more moves gets the next smaller share
# on its own (100 models over eight seeds: 1.204x the bound, where a whole schedule planned again at
# the smaller share gave 1.225x; two seeds in eight needed it, at 1.33x and 1.28x rather than 1.25x and 1.20x).
COPY_CHANGE_SHARES = (0.75, 0.4, 0.15)
NO_TIME_NOTE = "the time limit left no time to schedule: every step keeps the static plan"
# A step that drains one level less, against one that drains more, until one is timed: measured
# 0.63-0.82 on 1,000 models (20, 26 and 32 ms), with room to spare.
STEP_COST_SHARE = 0.9
# Steps to come are reserved this much more than they have cost on average, and this many seconds
# more: on 1,000 models under a load of 3-4 on 2 cores, single steps took up to 3x the mean, and the
# mean of the steps left drifts as other work comes and goes (the command keeps a second for exiting too).
STEP_MARGIN, MARGIN_SECONDS = 1.25, 0.05
# The schedule is planned again with deeper drains when the time left is this many times what it took.
DEEP_TIME_RATIO = 2.0
# Planning again with runs of steps as one, this share of the plans the time left covers: the try
# that ran short is timed at its first steps, and later ones cost more (on 1,000 models, all of them
# planned again within 0.3 s of the deadline at 0.9).
RETRY_SHARE = 0.6


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
    choices = step_choices(options)
    bounds = step_bounds(options, fleet, choices)
    if deadline is not None and deadline.passed():
        return _static(series, plan, fleet, bounds, NO_TIME_NOTE, 0)
    chosen = schedule_configs(options, choices, fleet, plan.chosen)
    static_hours = plan.device_count * series.steps * series.step_seconds / SECONDS_PER_HOUR
    plans, timed = series.steps, None
    try:
        while True:
            try:
                schedule = _follow(series, chosen, fleet, bounds, max_moves_per_step, deadline, plans, timed)
                break
            except _OutOfTime as e:
                plans, timed = min(plans - 1, int(RETRY_SHARE * e.plans())), e.clock
                if plans < 2:
                    return _static(series, plan, fleet, bounds, str(e), e.step)
    except InfeasibleError:
        return _static(series, plan, fleet, bounds, f"no schedule within {counted(max_moves_per_step, 'move')} per "
                                                    "step was found: every step keeps the static plan")
    schedule = _deeper(schedule, series, chosen, fleet, bounds, max_moves_per_step, deadline, plans)
    if schedule.gpu_hours < static_hours:
        return schedule
    return _static(series, plan, fleet, bounds, "the static plan needs no more GPU-hours: every step keeps it")


def _deeper(found: Schedule, series: DemandSeries, chosen: Sequence[SeriesOption], fleet: Fleet, bounds: np.ndarray,
            limit: int, deadline: Deadline | None, plans: int) -> Schedule:
    """The schedule again with every step drained deep, when the time left covers it twice over
    (on 100 models, not on 1,000 within 10 s), if it needs fewer GPU-hours; else the one ``found``."""
    if plans < series.steps or (deadline is not None and deadline.remaining() < DEEP_TIME_RATIO * found.solve_seconds):
        return found
    try:
        deeper = _follow(series, chosen, fleet, bounds, limit, deadline, top=Drain.DEEP)
    except (_OutOfTime, InfeasibleError):
        return found
    return deeper if deeper.gpu_hours < found.gpu_hours else found


class _OutOfTime(Exception):
    """The time left cannot place the steps to come, even undrained: the schedule stops at ``step``."""

    def __init__(self, step: int, plans_left: int, remaining_seconds: float, clock: _StepClock) -> None:
        per_plan_seconds = clock.per_step(Drain.NONE)
        super().__init__(f"the time limit left {remaining_seconds:.1f} s for {counted(plans_left, 'more plan')} "
                         f"(about {per_plan_seconds * 1000:.0f} ms each, undrained): every step keeps the static plan")
        self.step, self.per_plan_seconds, self.remaining_seconds = step, per_plan_seconds, remaining_seconds
        self.setup_seconds, self.clock = clock.setup_seconds, clock

    def plans(self) -> int:
        """How many plans the time left places again from the first, undrained (its copies counted
        and placed first as this try did); 0 when it cannot say."""
        left = self.remaining_seconds - STEP_MARGIN * self.setup_seconds - MARGIN_SECONDS
        if left <= 0 or self.per_plan_seconds <= 0:
            return 0
        return int(left / (STEP_MARGIN * self.per_plan_seconds))


@dataclass
class _StepClock:
    """What a step has cost at each :class:`Drain` (from one step's start to the next's): the time
    to reserve for the steps left."""

    setup_seconds: float  # counting the copies and placing the first step
    seconds: list[float] = field(default_factory=lambda: [0.0] * len(Drain))
    counts: list[int] = field(default_factory=lambda: [0] * len(Drain))

    def timed(self, drain: Drain, seconds: float) -> None:
        self.seconds[drain] += seconds
        self.counts[drain] += 1

    def per_step(self, drain: Drain) -> float:
        """Until a step is timed at ``drain``, it is taken to cost its measured share of a step
        that drains more, with room to spare; a level timed cheaper than one below it costs that one's time."""
        below = self.per_step(Drain(drain - 1)) if drain > Drain.NONE else 0.0
        if self.counts[drain]:
            return max(self.seconds[drain] / self.counts[drain], below)
        above = next((d for d in Drain if d > drain and self.counts[d]), None)
        if above is None:
            return below
        return max(STEP_COST_SHARE ** (above - drain) * self.seconds[above] / self.counts[above], below)

    def reserve(self, drain: Drain, steps: int, margin: float = STEP_MARGIN) -> float:
        """Seconds to keep for ``steps`` at ``drain``, with the margin a busy machine needs."""
        return margin * self.per_step(drain) * steps + MARGIN_SECONDS if steps else 0.0

    def affordable(self, deadline: Deadline, t: int, steps_left: int, top: Drain = Drain.ALL) -> Drain:
        """The most draining step ``t`` can do and still leave each step after it the next less
        (and one more such step's time to spare: the last step ends past its estimate as often as
        not); raises :class:`_OutOfTime` when the time left covers not even every step undrained.
        Until an undrained step is timed, its time is the drained steps' share (STEP_COST_SHARE),
        which already overstates it (on 1,000 models an undrained step costs 0.6 of a drained one):
        with a margin on top, the command planned every step in one run and gave up on them in the
        next, whichever way its first step's time fell. So before the steps left are given up on,
        one undrained step is timed: on 1,000 models with `--format json`, which keeps time for
        writing, the command then planned every step (1.24-1.25x the bound) in two runs of three
        rather than none."""
        remaining = deadline.remaining()
        if remaining < self.reserve(Drain.NONE, steps_left, 1.0):
            if not self.counts[Drain.NONE] and remaining > self.reserve(Drain.NONE, 2, 1.0):
                return Drain.NONE  # an undrained step, timed before the steps left are given up on
            raise _OutOfTime(t, steps_left, remaining, self)
        for drain in (Drain(d) for d in range(top, Drain.NONE, -1)):
            if remaining > self.reserve(drain, 1) + self.reserve(Drain(drain - 1), steps_left):
                return drain
        return Drain.NONE


def _follow(series: DemandSeries, chosen: Sequence[SeriesOption], fleet: Fleet, bounds: np.ndarray, limit: int,
            deadline: Deadline | None, plans: int | None = None, timed: _StepClock | None = None,
            top: Drain = Drain.ALL) -> Schedule:
    """Each step placed from the one before, drained as far as the ``deadline`` leaves the steps
    after it the time to drain a little less. A step whose transition cannot be ordered safely
    within ``limit`` moves gets a smaller share of them for copy changes (COPY_CHANGE_SHARES), and
    the steps from the first whose copies that changes are placed again; raises
    :class:`InfeasibleError` when not even the smallest share does, and :class:`_OutOfTime` when
    the time left cannot place the steps to come even undrained. With fewer ``plans`` than steps,
    runs of consecutive steps are placed as one, which serves the busiest of them, merged where
    that costs the fewest device-steps (:func:`_runs`): the fleet changes less often, and the
    schedule takes as many times less time. ``timed``: what a try before this one
    measured each step to cost, so that its first steps are not drained blind. ``top``: the most a
    step drains."""
    entered = timing.clock()
    starts = np.arange(series.steps)
    shares = [max(1, int(limit * share)) for share in COPY_CHANGE_SHARES]
    if plans is not None and plans < series.steps:
        need = copies_within_moves(chosen, series.steps, np.full(series.steps, shares[0]))
        volumes = step_volumes([[(n, c)] for n, c in zip(need, copy_costs(chosen, need))], fleet)
        starts = _runs(np.stack([v[0] for v in volumes]), plans)
    plans, ends = len(starts), np.append(starts[1:], series.steps)
    busiest = [dataclasses.replace(o, rates_per_copy=_busiest(o.rates_per_copy, starts)) for o in chosen]
    changes = np.full(plans, shares[0])  # per transition: how many copy changes it may make
    planned, copies, costs, placer = _placing(chosen, busiest, starts, ends, changes, fleet)
    placed = [ScheduledStep(placer.first(planned[:, 0]), ())]
    clock = _StepClock(timing.clock() - entered, *((list(timed.seconds), list(timed.counts)) if timed else ()))
    cut_short_at, last, begun = None, None, 0.0
    t = 1
    while t < plans:
        started = timing.clock()
        if last is not None:
            clock.timed(last, started - begun)
        begun = started
        drain = top if placed[-1].device_count > bounds[starts[t]:ends[t]].max() else Drain.NONE
        if deadline is not None:
            affordable = clock.affordable(deadline, int(starts[t]), plans - t, top)
            if drain:
                drain = min(drain, affordable)
                cut_short_at = int(starts[t]) if cut_short_at is None and drain < top else cut_short_at
        last = drain
        try:
            placed.append(placer.next(placed[-1].devices, planned[:, t], t, limit, drain=drain))
        except InfeasibleError:
            smaller = [n for n in shares if n < changes[t]]
            if not smaller:
                raise
            # Fewer copy changes into step t leave more moves to relieve devices; copies loaded ahead
            # of it change the steps before, which are placed again from the first that changes.
            changes[t] = smaller[0]
            before = planned
            planned, copies, costs, placer = _placing(chosen, busiest, starts, ends, changes, fleet)
            changed = np.flatnonzero((planned != before).any(axis=0))
            t = min(t, int(changed[0])) if len(changed) else t
            if t == 0:
                placed, t = [ScheduledStep(placer.first(planned[:, 0]), ())], 1
            del placed[t:]
            continue
        t += 1
    run_of = np.repeat(np.arange(plans), ends - starts)
    steps = tuple(placed[r] if t == starts[r] else ScheduledStep(placed[r].devices, ())
                  for t, r in enumerate(run_of.tolist()))
    notes = [] if plans == series.steps else [
        f"the time limit left time for {counted(plans, 'plan')} of the {series.steps} steps only: the fleet "
        "changes between them, each serving the busiest of its steps, steps planned together where that "
        "costs least"]
    if cut_short_at is not None:
        notes.append(f"the time limit cut the search short at step {cut_short_at}: from there on, devices are "
                     "drained only as far as the time left allows")
    return Schedule(tuple(chosen), copies, costs, steps, fleet, series.step_seconds, bounds,
                    cut_short_at_step=cut_short_at, note="; ".join(notes), solve_seconds=timing.clock() - entered)


def _placing(chosen: Sequence[SeriesOption], busiest: Sequence[SeriesOption], starts: np.ndarray, ends: np.ndarray,
             changes: np.ndarray, fleet: Fleet) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...], Placer]:
    """Each plan's copies (``busiest``: each model's rates at the busiest step of each run beginning
    at ``starts``), evened out to ``changes`` per transition; each step's copies and costs; and a
    placer of the plans, each run at each copy's costliest step within it (a lower rate may cost
    more bandwidth)."""
    planned = copies_within_moves(busiest, len(starts), changes)
    copies = np.repeat(planned, ends - starts, axis=1)
    costs = copy_costs(chosen, copies)
    return planned, copies, costs, Placer(chosen, [_busiest(c, starts) for c in costs], fleet)


def _busiest(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The most of each run of steps (the last axis) beginning at ``starts``, one per run."""
    return values if len(starts) == values.shape[-1] else np.maximum.reduceat(values, starts, axis=-1)


def _runs(volumes: np.ndarray, plans: int) -> np.ndarray:
    """Where each of ``plans`` runs of consecutive steps begins, from ``volumes`` [model, resource,
    step] (each model's copies as a share of a device). A run holds each model at its busiest step
    within it, so its devices are at least the busiest resource's sum of those maxima. Neighbouring
    runs are merged while there are more: the two whose merging adds the fewest device-steps by
    that volume, the shorter when it ties. Merging by the steps' own bounds instead, a run could
    hold the americas' evening beside europe's morning: on 1,000 models, transitions no longer
    fitted the move limit."""
    busiest = [volumes[:, :, t] for t in range(volumes.shape[2])]
    sizes = [float(b.sum(axis=0).max(initial=0.0)) for b in busiest]
    lengths = [1] * len(busiest)
    starts = list(range(len(busiest)))

    def added(i: int) -> tuple[float, int]:
        merged = float(np.maximum(busiest[i], busiest[i + 1]).sum(axis=0).max(initial=0.0))
        length = lengths[i] + lengths[i + 1]
        return merged * length - sizes[i] * lengths[i] - sizes[i + 1] * lengths[i + 1], length

    costs = [added(i) for i in range(len(starts) - 1)]
    while len(starts) > max(plans, 1):
        i = min(range(len(costs)), key=costs.__getitem__)
        busiest[i] = np.maximum(busiest[i], busiest[i + 1])
        sizes[i] = float(busiest[i].sum(axis=0).max(initial=0.0))
        lengths[i] += lengths[i + 1]
        del busiest[i + 1], sizes[i + 1], lengths[i + 1], starts[i + 1], costs[i]
        for j in (i - 1, i):
            if 0 <= j < len(costs):
                costs[j] = added(j)
    return np.array(starts, dtype=np.int64)


def _static(series: DemandSeries, plan: SeriesPlan, fleet: Fleet, bounds: np.ndarray, note: str,
            cut_short_at: int | None = None) -> Schedule:
    """Every step on the series plan's placement, which serves them all: no move at all."""
    copies = np.array([[o.copies] * series.steps for o in plan.chosen], dtype=int).reshape(len(plan.chosen), series.steps)
    steps = (ScheduledStep(plan.devices, ()),) * series.steps
    return Schedule(plan.chosen, copies, tuple(o.cost for o in plan.chosen), steps, fleet, series.step_seconds, bounds,
                    cut_short_at_step=cut_short_at, note=note)
