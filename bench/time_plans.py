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
forecast, and the capacity the schedule placed. The three plans are solved as the command solves
them (`series_cli.solve_series`), under one `--time-limit` (default 10 s, the command's) that starts
before the problem is built, as the command's starts before it reads its files; only the YAML
files are not read. Targets, each printed as met or missed: static <= 0.85 x the sum of the peaks;
schedule GPU-hours <= 0.6 x the sum of the peaks' fleet for the week, and within 1.1 x of the
bound; everything within the time limit.
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
from gpupack.scheduler.demand.cli import most_copies  # noqa: E402
from gpupack.scheduler.demand.forecast import exceeded_share, forecast  # noqa: E402
from gpupack.scheduler.demand.series_cli import solve_series  # noqa: E402
from gpupack.scheduler.devices_file import identical_devices  # noqa: E402
from gpupack.scheduler.packing.problem import Objective  # noqa: E402
from gpupack.timing import Deadline  # noqa: E402

GiB = 2**30
STEPS = 168
# Local hour of the peak and the UTC offset of each group; "batch" peaks at 02:00 local.
GROUPS = (("americas", 14, -8), ("europe", 14, 1), ("asia", 14, 8), ("batch", 2, 0))
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
    started = time.perf_counter()  # as the command's clock starts before it builds the problem
    deadline = Deadline.after(time_limit)
    peaks_needed = most_copies(profile, series.peaks(), 0)
    base = build_problem(profile.models, identical_devices(peaks_needed, 16 * GiB).devices, profile.server_baseline,
                         None, limited=ALL_RESOURCES)
    startup_seconds = time.perf_counter() - started
    outcome, schedule = solve_series(profile, series, base, ALL_RESOURCES, (Objective.MIN_DEVICES,), deadline, moves)
    total_seconds = time.perf_counter() - started
    peaks, static = outcome.sum_of_peaks.result, outcome.result
    static_ratio = static.device_count / peaks.device_count
    fleet_hours = peaks.device_count * STEPS
    hours_ratio, bound_ratio = schedule.gpu_hours / fleet_hours, schedule.gpu_hours / schedule.bound_gpu_hours
    within = total_seconds <= time_limit
    most_moves = max(len(s.moves) for s in schedule.steps)
    print(f"{n} models x {STEPS} hourly steps (peak demand x{load:g}, at most {moves} moves per step), "
          f"planned as `gpupack plan --demand-series --schedule --time-limit {time_limit:g}s` plans them:")
    print(f"  sum of the peaks:              {peaks.device_count} devices (bound {peaks.lower_bound}) "
          f"= {fleet_hours} GPU-hours")
    print(f"  static, by the peak of the sum: {static.device_count} devices (bound {static.lower_bound}) "
          f"= {static_ratio:.2f}x the sum of the peaks{_met(static_ratio <= STATIC_TARGET, f'<= {STATIC_TARGET}')}")
    print(f"  schedule:                       {schedule.gpu_hours:g} GPU-hours "
          f"({min(s.device_count for s in schedule.steps)}-{max(s.device_count for s in schedule.steps)} devices, "
          f"at most {most_moves} moves between steps)" + (f"; {schedule.note}" if schedule.note else ""))
    print(f"    = {hours_ratio:.2f}x the sum of the peaks' fleet{_met(hours_ratio <= SCHEDULE_TARGET, f'<= {SCHEDULE_TARGET}')}; "
          f"bound {schedule.bound_gpu_hours:g} GPU-hours, {bound_ratio:.3f}x it{_met(bound_ratio <= BOUND_TARGET, f'<= {BOUND_TARGET}')}")
    placed = DemandSeries(3600.0, {o.model: tuple(float(c) * o.capacity_per_second for c in schedule.copies[m])
                                   for m, o in enumerate(schedule.chosen)}, {})
    print(f"  forecast (same hour of the last {HISTORY_WEEKS} weeks, max x {1 + HEADROOM:g}), on the held-out week: "
          f"{exceeded_share(series, held_out):.2%} of (model, step) pairs above the forecast, "
          f"{exceeded_share(placed, held_out):.2%} above the capacity the schedule placed")
    print(f"  time: {total_seconds:.1f} s of the {time_limit:g} s limit{_met(within, 'within it')}: problem "
          f"{startup_seconds:.1f} s, sum of the peaks {peaks.solve_seconds:.1f} s, series plan {static.solve_seconds:.1f} s, "
          f"schedule {schedule.solve_seconds:.1f} s")
    return static_ratio <= STATIC_TARGET and hours_ratio <= SCHEDULE_TARGET and bound_ratio <= BOUND_TARGET and within


def _met(met: bool, target: str) -> str:
    return f" (target {target}: {'met' if met else 'MISSED'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="100,1000", help="fleet sizes, comma-separated (default: 100,1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--load", type=float, default=4.0, help="peak demand times this (default: 4)")
    parser.add_argument("--time-limit", type=float, default=10.0,
                        help="seconds for the whole plan (the problem, the sum of the peaks, the series plan and the "
                             "schedule), as plan --time-limit gives them (default: 10, the command's)")
    parser.add_argument("--moves-per-model", type=float, default=0.4,
                        help="the move limit between two steps, per model in the fleet (default: 0.4)")
    args = parser.parse_args()
    met = [run(int(n), args.seed, args.load, max(1, round(int(n) * args.moves_per_model)), args.time_limit)
           for n in args.models.split(",")]
    print("every target met" if all(met) else "some target missed")
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
