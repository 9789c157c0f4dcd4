"""`gpupack plan --demand-series FILE`: one placement for every step of a demand series, packed by
the peak of the sum, beside today's demand plan at each model's peak (the sum of the peaks),
both solved within the time limit in the same run; with ``--schedule``, also a plan per step."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
from typing import Callable, Sequence

from gpupack import timing
from gpupack.demand_series import DemandSeries, load_demand_series
from gpupack.domain import Resource
from gpupack.errors import InputError
from gpupack.profiles import Profile
from gpupack.rules.policy import PolicySet
from gpupack.scheduler.constraints import build_problem
from gpupack.rules.demand_source import demand_series_from_prometheus
from gpupack.scheduler.demand.cli import flag, most_copies
from gpupack.scheduler.demand.forecast import forecast
from gpupack.units import parse_duration, parse_ratio
from gpupack.scheduler.demand.plan import plan_for_demand
from gpupack.scheduler.demand import schedule_report
from gpupack.scheduler.demand.schedule import SECONDS_PER_HOUR, Schedule, schedule_series
from gpupack.scheduler.demand.series import fleet_of, plan_series, series_options
from gpupack.scheduler.demand.series_report import SeriesOutcome, render_json, render_table
from gpupack.scheduler.demand.series_result import as_result
from gpupack.scheduler.devices_file import PlannedDevices
from gpupack.scheduler.packing.problem import Objective, PlacementProblem
from gpupack.scheduler.plan_report import Limits, TimeBudget
from gpupack.timing import Deadline

LEAST_SOLVE_SECONDS = 0.1
WEEK_SECONDS = 7 * 86400.0
PEAKS_SHARE = 0.5  # of the time left, for the sum of the peaks: the series plans are quick heuristics
# With --schedule: less for the sum of the peaks (on bench/time_plans.py's fleets, 1.2 s finds the
# same 125 and 1,123 devices as 2.5 s), and of what is left then, this for the series plan; the
# schedule, a step at a time, takes the rest (on 1,000 models, 20-40 ms a step, 168 steps a week).
SCHEDULE_PEAKS_SHARE, STATIC_SHARE = 0.12, 0.15
# Writing the JSON, counted over the series plan's copies at every step (which a schedule's steps
# hold at most; the static plan's copies are written with a rate per step too): a week of 1,000
# models, 4,055 copies, 38 MB with the schedule, takes 0.7 s on a quiet core (1.0 us a copy and
# step); twice that is kept back for a busy machine.
JSON_SECONDS_PER_COPY_STEP = 2e-6


def run_series(args: argparse.Namespace, settings: dict, profile: Profile, policies: PolicySet | None,
               devices_for: Callable[[int], PlannedDevices], limits: Limits, started: float,
               deadline: Deadline) -> int:
    series, origin = _series(args)
    known = {m.model for m in profile.models}
    for model in series.models:
        if model not in known:
            raise InputError(f"model {model!r} is not in the profile {args.profile}", path=origin)
    peaks = series.peaks()
    planned = devices_for(most_copies(profile, peaks, 0))
    base = build_problem(profile.models, planned.devices, profile.server_baseline, policies, servers=planned.servers,
                         limited=limits.limited)
    if profile.colocations:
        raise InputError("--demand-series does not plan with measured colocations yet: use a profile without "
                         "colocations:, or plan with --demand", path=args.profile)
    if base.allowed_devices or base.anti_affinity or base.scoped_limits:
        raise InputError("--demand-series plans capacity limits, replicas and fleet size; "
                         "pins, anti-affinity and scoped limits are not planned over steps yet")
    startup_seconds = timing.clock() - started
    # The inputs (a 1,000-model profile and its week: millions of objects) live until the command
    # ends: frozen, the collections that planning triggers no longer walk them.
    gc.freeze()
    writing = JSON_SECONDS_PER_COPY_STEP if args.format == "json" else 0.0
    outcome, schedule = solve_series(profile, series, base, limits.limited, settings["objective"], deadline,
                                     args.max_moves_per_step if args.schedule else None, writing)
    budget = TimeBudget(settings["time_limit"], startup_seconds)
    if schedule is not None:
        return _schedule(args, outcome, schedule, budget)
    render = render_json if args.format == "json" else render_table
    sys.stdout.write(render(outcome, limits, budget))
    if args.plot:
        from gpupack.scheduler.plot import plot_placement  # matplotlib only when asked

        plot_placement(base, outcome.result, args.plot)
    return 0


def _series(args: argparse.Namespace) -> tuple[DemandSeries, str]:
    """The series to plan: as given, or with ``--forecast-weeks``, the coming week forecast from it."""
    if args.demand_series:
        series, origin = load_demand_series(args.demand_series), args.demand_series
    else:
        window, step = flag("--window", parse_duration, args.window), flag("--step", parse_duration, args.step)
        if step <= 0:
            raise InputError("--step: must be above 0")
        series = demand_series_from_prometheus(args.demand_from_prometheus, window, step)
        origin = f"Prometheus {args.demand_from_prometheus}"
    if not series.models:
        raise InputError("the demand series has no model", path=origin)
    headroom = flag("--headroom", parse_ratio, args.headroom)
    if args.forecast_weeks is None:
        return series.scaled(1 + headroom), origin
    week_steps = WEEK_SECONDS / series.step_seconds
    if abs(week_steps - round(week_steps)) > 1e-9:
        raise InputError(f"--forecast-weeks: a week is not a whole number of steps of {series.step_seconds:g} s",
                         path=origin)
    return forecast(series, round(week_steps), args.forecast_weeks, headroom), origin


def solve_series(profile: Profile, series: DemandSeries, base: PlacementProblem, limited: frozenset[Resource],
                 objectives: Sequence[Objective], deadline: Deadline, max_moves_per_step: int | None = None,
                 writing_seconds_per_copy_step: float = 0.0) -> tuple[SeriesOutcome, Schedule | None]:
    """The sum of the peaks, the series plan and, with ``max_moves_per_step``, the schedule, each
    within its share of the ``deadline`` (start-up already spent): what `plan --demand-series`
    prints, and what bench/time_plans.py times. The schedule stops early enough to leave
    ``writing_seconds_per_copy_step`` for every copy and step its answer writes."""
    share = SCHEDULE_PEAKS_SHARE if max_moves_per_step else PEAKS_SHARE
    sum_of_peaks = plan_for_demand(profile, series.peaks(), base, objectives,
                                   max(deadline.remaining() * share, LEAST_SOLVE_SECONDS))
    solving = timing.clock()
    options = series_options(profile, series, base.replicas)
    # The sum of the peaks' configurations are one more choice to pack by the peak of the sum.
    packing = deadline.share(STATIC_SHARE) if max_moves_per_step else deadline
    plan = plan_series(options, fleet_of(base, limited), seeds=(sum_of_peaks.configs,), deadline=packing)
    outcome = SeriesOutcome(series, base, plan, as_result(plan, timing.clock() - solving), sum_of_peaks)
    if max_moves_per_step is None:
        return outcome, None
    solving = timing.clock()
    writing = writing_seconds_per_copy_step * series.steps * sum(o.copies for o in plan.chosen)
    schedule = schedule_series(series, plan, options, max_moves_per_step, Deadline(deadline.at - writing))
    return outcome, dataclasses.replace(schedule, solve_seconds=timing.clock() - solving)


def _schedule(args: argparse.Namespace, outcome: SeriesOutcome, schedule: Schedule, budget: TimeBudget) -> int:
    render = schedule_report.render_json if args.format == "json" else schedule_report.render_table
    sys.stdout.write(render(outcome, schedule, budget))
    if args.plot:
        from gpupack.scheduler.plot import plot_schedule  # matplotlib only when asked

        plot_schedule([s.device_count for s in schedule.steps], list(schedule.lower_bounds), outcome.result.device_count,
                      outcome.sum_of_peaks.result.device_count, outcome.series.step_seconds / SECONDS_PER_HOUR,
                      args.plot)
    return 0
