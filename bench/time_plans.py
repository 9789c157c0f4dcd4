"""Plans across time: `python bench/time_plans.py [--models 100,1000] [--moves-per-model 0.4]`.

Fleets of the demand benchmark's models (bench/demand.py: 3-6 configurations each, p99 budgets,
lognormal peak demand), each model given five weeks of hourly demand (168 steps a week): a diurnal
curve (night floor 10-25% of the peak), its group shifted by time zone (UTC-8, UTC+1, UTC+8, and
batch jobs at night), weekdays above weekends (business apps at 30-50% on Saturday and Sunday),
10% noise, a few one- or two-hour bursts that differ from week to week, and up to 2% growth a
week. The week planned is forecast from the first four (the same hour of the same weekday, its
maximum, times 1.1); the fifth is held out to measure the forecast. On 16 GiB devices with 100% limits on memory, utilisation and
bandwidth it prints:

- the sum of the peaks: the demand plan with every model at its own peak;
- the static plan by the peak of the sum (`gpupack plan --demand-series`), and its bound;
- the schedule (`--schedule`, at most 0.4 moves per model between two steps: 40 for 100 models):
  GPU-hours, its bound (every step's own lower bound), and the most moves between two steps.

It also prints the share of (model, step) pairs of the held-out week whose demand exceeded the
forecast, and the capacity the schedule placed. The series plan and the schedule share
`--time-limit` seconds (default 10) as the command shares what start-up and the sum of the peaks
leave them. Targets: static <= 0.85 x the sum of the peaks; schedule GPU-hours <= 0.6 x the sum of
the peaks' fleet for the week, and within 1.1 x of the bound; both plans within the time limit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demand import random_fleet  # noqa: E402  (the demand benchmark's fleets)

from gpupack.demand_series import DemandSeries  # noqa: E402
from gpupack.scheduler.constraints import ALL_RESOURCES, build_problem  # noqa: E402
from gpupack.scheduler.demand.forecast import exceeded_share, forecast  # noqa: E402
from gpupack.scheduler.demand.plan import plan_for_demand  # noqa: E402
from gpupack.scheduler.demand.schedule import schedule_series  # noqa: E402
from gpupack.scheduler.demand.series import fleet_of, plan_series, series_options  # noqa: E402
from gpupack.scheduler.demand.series_cli import STATIC_SHARE  # noqa: E402
from gpupack.timing import Deadline  # noqa: E402
from gpupack.scheduler.devices_file import identical_devices  # noqa: E402

GiB = 2**30
STEPS = 168
# Local hour of the peak and the UTC offset of each group; "batch" peaks at 02:00 local.
GROUPS = (("americas", 14, -8), ("europe", 14, 1), ("asia", 14, 8), ("batch", 2, 0))
PEAKS_SECONDS = 10.0
HISTORY_WEEKS, HEADROOM = 4, 0.1
STATIC_TARGET, SCHEDULE_TARGET, BOUND_TARGET = 0.85, 0.6, 1.1


def weekly_curves(rng: np.random.Generator, group: int, weeks: int) -> np.ndarray:
    """[week, step]: shares of the model's peak; the shape is the model's, the noise (10%), the
    bursts and a growth of up to 2% a week differ from week to week."""
    _, peak_hour, offset = GROUPS[group]
    hours = np.arange(STEPS)
    local = (hours + offset) % 24
    floor = rng.uniform(0.1, 0.25)
    width = rng.uniform(3.0, 5.0)
    distance = np.minimum(np.abs(local - peak_hour), 24 - np.abs(local - peak_hour))
    shape = floor + (1 - floor) * np.exp(-0.5 * (distance / width) ** 2)
    if GROUPS[group][0] != "batch":
        shape = np.where(((hours + offset) // 24 % 7) >= 5, shape * rng.uniform(0.3, 0.5), shape)
    growth = rng.uniform(0.0, 0.02)
    curves = []
    for week in range(weeks):
        curve = shape * rng.lognormal(0.0, 0.1, STEPS) * (1 + growth) ** week
        for _ in range(rng.integers(0, 4)):
            start = rng.integers(0, STEPS)
            curve[start:start + rng.integers(1, 3)] *= rng.uniform(1.2, 2.0)
        curves.append(curve)
    curves = np.array(curves)
    return curves / curves[:HISTORY_WEEKS].max()


def fleet_weeks(n: int, seed: int, load: float, weeks: int) -> tuple:
    """The fleet and its demand, one series per week."""
    profile, demands = random_fleet(n, seed)
    rng = np.random.default_rng(seed + 1000)
    curves = {d.model: d.rate_per_second * load * weekly_curves(rng, int(rng.integers(0, 4)), weeks) for d in demands}
    budgets = {d.model: d.latency_p99_seconds for d in demands if d.latency_p99_seconds is not None}
    return profile, [DemandSeries(3600.0, {m: tuple(float(r) for r in c[w]) for m, c in curves.items()}, budgets)
                     for w in range(weeks)]


def joined(weeks: list[DemandSeries]) -> DemandSeries:
    return DemandSeries(weeks[0].step_seconds, {m: sum((w.rates_per_second[m] for w in weeks), ()) for m in weeks[0].models},
                        weeks[0].latency_p99_seconds)


def run(n: int, seed: int, load: float, moves: int, time_limit: float) -> bool:
    profile, weeks = fleet_weeks(n, seed, load, HISTORY_WEEKS + 1)
    series = forecast(joined(weeks[:HISTORY_WEEKS]), STEPS, HISTORY_WEEKS, HEADROOM)
    held_out = weeks[HISTORY_WEEKS]
    started = time.perf_counter()
    options = series_options(profile, series)
    devices = identical_devices(sum(max(o.copies for o in mine) for mine in options), 16 * GiB).devices
    base = build_problem(profile.models, devices, profile.server_baseline, None, limited=ALL_RESOURCES)
    fleet = fleet_of(base, ALL_RESOURCES)
    peak_plan = plan_for_demand(profile, series.peaks(), base, time_limit_seconds=PEAKS_SECONDS)
    peaks, peaks_seconds = peak_plan.result, time.perf_counter() - started
    started = time.perf_counter()
    deadline = Deadline.after(time_limit)  # the series plans share it as the command's do
    static = plan_series(options, fleet, seeds=(peak_plan.configs,), deadline=deadline.share(STATIC_SHARE))
    static_seconds = time.perf_counter() - started
    started = time.perf_counter()
    schedule = schedule_series(series, static, options, moves, deadline)
    schedule_seconds = time.perf_counter() - started
    within = static_seconds + schedule_seconds <= time_limit
    week = STEPS
    static_ratio = static.device_count / peaks.device_count
    fleet_hours = peaks.device_count * week
    hours_ratio, bound_ratio = schedule.gpu_hours / fleet_hours, schedule.gpu_hours / schedule.bound_gpu_hours
    most_moves = max(len(s.moves) for s in schedule.steps)
    print(f"{n} models x {STEPS} hourly steps (peak demand x{load:g}, at most {moves} moves per step):")
    print(f"  sum of the peaks:              {peaks.device_count} devices ({peaks_seconds:.1f} s; bound {peaks.lower_bound})"
          f" = {fleet_hours} GPU-hours")
    print(f"  static, by the peak of the sum: {static.device_count} devices ({static_seconds:.1f} s; bound "
          f"{static.lower_bound}) = {static_ratio:.2f}x the sum of the peaks (target <= {STATIC_TARGET})")
    print(f"  schedule:                       {schedule.gpu_hours:g} GPU-hours ({schedule_seconds:.1f} s; "
          f"{min(s.device_count for s in schedule.steps)}-{max(s.device_count for s in schedule.steps)} devices, "
          f"at most {most_moves} moves between steps)" + (f"; {schedule.note}" if schedule.note else ""))
    print(f"    = {hours_ratio:.2f}x the sum of the peaks' fleet (target <= {SCHEDULE_TARGET}); "
          f"bound {schedule.bound_gpu_hours:g} GPU-hours, {bound_ratio:.3f}x it (target <= {BOUND_TARGET})")
    placed = DemandSeries(3600.0, {o.model: tuple(float(c) * o.capacity_per_second for c in schedule.copies[m])
                                   for m, o in enumerate(schedule.chosen)}, {})
    print(f"  forecast (same hour of the last {HISTORY_WEEKS} weeks, max x {1 + HEADROOM:g}), on the held-out week: "
          f"{exceeded_share(series, held_out):.2%} of (model, step) pairs above the forecast, "
          f"{exceeded_share(placed, held_out):.2%} above the capacity the schedule placed")
    print(f"  series plan and schedule together: {static_seconds + schedule_seconds:.1f} s of the {time_limit:g} s "
          f"limit" + ("" if within else " (over)"))
    return static_ratio <= STATIC_TARGET and hours_ratio <= SCHEDULE_TARGET and bound_ratio <= BOUND_TARGET and within


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="100,1000", help="fleet sizes, comma-separated (default: 100,1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--load", type=float, default=4.0, help="peak demand times this (default: 4)")
    parser.add_argument("--time-limit", type=float, default=10.0,
                        help="seconds for the series plan and the schedule together, as plan --time-limit gives "
                             "them after start-up and the sum of the peaks (default: 10)")
    parser.add_argument("--moves-per-model", type=float, default=0.4,
                        help="the move limit between two steps, per model in the fleet (default: 0.4)")
    args = parser.parse_args()
    met = [run(int(n), args.seed, args.load, max(1, round(int(n) * args.moves_per_model)), args.time_limit)
           for n in args.models.split(",")]
    print("every target met" if all(met) else "some target missed")
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
