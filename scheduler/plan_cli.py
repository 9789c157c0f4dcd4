"""Compute where models should run: the fewest (or cheapest, or most balanced) devices for a
profile, under policies, or for the traffic each model must serve (--demand).

No device is planned above 100% of any resource the profile measures (memory, utilization,
memory bandwidth); policies only lower these limits. --resources memory fills memory alone, as
the article's first case study does, and lets utilization and bandwidth go over 100%.

When the policies set capacity limits below 100%, the plan is also made at 100% and the output
says how many devices the limits cost. --time-limit bounds the whole command, every plan
included, and the output says where the time went.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from gpupack import timing
from gpupack.config import ConfigFile, Setting, resolve_settings, split_list
from gpupack.domain import Resource
from gpupack.errors import InputError
from gpupack.profiles import Profile, load_profile
from gpupack.rules.loader import load_policies_if_given
from gpupack.rules.policy import CapacityPolicy, PolicySet
from gpupack.rules.compiled import compile_policies
from gpupack.scheduler.colocations import broken_groups
from gpupack.scheduler.constraints import ALL_RESOURCES, build_problem, fleet_for
from gpupack.scheduler.devices_file import PlannedDevices, identical_devices, load_devices
from gpupack.scheduler.plan_report import CapacityPolicyCost, Limits, TimeBudget, render_json, render_table
from gpupack.scheduler.planning import plan_under
from gpupack.scheduler.verify_loop import Verification
from gpupack.scheduler.packing.problem import InfeasibleError
from gpupack.scheduler.packing.solver import Objective, solve
from gpupack.timing import Deadline
from gpupack.units import parse_bytes, parse_count, parse_duration

SETTINGS = (
    Setting("policies", str, help="policy YAML file or directory"),
    Setting("device_memory", parse_bytes, help="memory of each identical device, e.g. 16GiB"),
    Setting("devices", parse_count, help="number of identical devices (default: as many as needed)"),
    Setting("devices_file", str, help="YAML list of devices (name, memory, count, cost, labels)"),
    # Fewest devices first, then spread the load over them: the article's placements, with headroom.
    Setting("objective", lambda v: _objectives(v), (Objective.MIN_DEVICES, Objective.BALANCE)),
    Setting("resources", lambda v: _resources(v), ALL_RESOURCES),
    Setting("time_limit", parse_duration, 10.0),
)

# The plan under the policies is the answer; the one at 100% only prices the policies.
PLAN_SHARE = 0.6
# Kept back from the time limit for building the second problem, writing the output and exiting
# (unloading OR-Tools and HiGHS takes most of a second on a busy machine).
RESERVE_SECONDS = 1.0
# and per model: compiling the policies and the second problem, and the table, for 5,000 models
# take about a second more.
RESERVE_SECONDS_PER_MODEL = 2e-4
# With a demand series: the table written and the process gone 0.15 s after the plan on 1,000
# models (OR-Tools loaded), kept three times over; the JSON keeps its own time for writing.
SERIES_RESERVE_SECONDS = 0.5
# Rejected configurations named per model when a model cannot be placed; the profile has the rest.
REASONS_SHOWN = 3


def configure(parser: argparse.ArgumentParser) -> None:
    objectives = ", ".join(o.value for o in Objective)
    parser.add_argument("--profile", required=True, metavar="FILE",
                        help="profile (YAML, JSON or CSV) of the models to place, as gpupack profile writes it")
    parser.add_argument("--policies", metavar="FILE",
                        help="policies: capacity limits, pins, anti-affinity, replicas, fleet size")
    parser.add_argument("--soft-alerts", action="store_true",
                        help="plan as a rebalance does: 'action: alert' policies are kept where possible and listed "
                             "when the plan breaks them (default: every policy must hold)")
    parser.add_argument("--device-memory", metavar="SIZE", help="memory of each identical device, e.g. 16GiB")
    parser.add_argument("--devices", metavar="N", help="number of identical devices (default: as many as needed)")
    parser.add_argument("--devices-file", metavar="FILE", help="YAML list of devices of different sizes and costs")
    parser.add_argument("--resources", metavar="NAME,...",
                        help="resources no device may exceed 100%% of: memory, utilization, bandwidth "
                             "(default: all three; memory is always limited). 'memory' alone fills memory "
                             "only, as the article's case study 1 does")
    parser.add_argument("--objective", metavar="NAME,...",
                        help=f"applied in order: {objectives} (default: min-devices,balance)")
    parser.add_argument("--time-limit", metavar="DURATION",
                        help="time limit for the whole command, every plan included, e.g. 10s (default: 10s)")
    parser.add_argument("--format", choices=["table", "json"], default="table",
                        help="table for people (default), or JSON in base units (bytes, ratios 0-1, seconds)")
    parser.add_argument("--demand", metavar="FILE",
                        help="plan for traffic: YAML of {model, rate_per_second, latency_p99_seconds} per model")
    parser.add_argument("--demand-from-prometheus", metavar="URL",
                        help="plan for traffic: each model's peak request rate over --window, from Prometheus")
    parser.add_argument("--window", metavar="DURATION", default="7d", help="with --demand-from-prometheus (default: 7d)")
    parser.add_argument("--headroom", metavar="RATIO", default="0%",
                        help="with --demand-from-prometheus or --demand-series, plan for this much more than the peak, "
                             "e.g. 20%%")
    parser.add_argument("--extra-copies", metavar="N", type=int, default=0,
                        help="with --demand, also consider up to N more copies than a model's demand needs (default: 0)")
    parser.add_argument("--latency-aware", action="store_true",
                        help="with --demand, refuse a device where a model's p99, estimated from its measured points "
                             "at the load the device reaches (each request waits for the work ahead of it, a wait "
                             "that grows as 1/(1 - utilisation)), would exceed its budget")
    parser.add_argument("--demand-series", metavar="FILE",
                        help="plan one placement for every step of a demand series (YAML: step, latency_p99_seconds, "
                             "series of rates per model), packed by the peak of the sum")
    parser.add_argument("--step", metavar="DURATION",
                        help="with --demand-from-prometheus, plan for its demand series in steps of this length "
                             "(each model's peak rate within each step of --window), as --demand-series does")
    parser.add_argument("--forecast-weeks", metavar="N", type=int,
                        help="plan the coming week of a demand series instead: per step, the highest rate of the same "
                             "step in the series' last N weeks, times 1 + --headroom")
    parser.add_argument("--schedule", action="store_true",
                        help="with --demand-series, a plan per step with the fleet following demand, "
                             "to the fewest GPU-hours found")
    parser.add_argument("--max-moves-per-step", metavar="N", type=int, default=10,
                        help="with --schedule, the most moves (loads, unloads, moves) between two steps (default: 10)")
    parser.add_argument("--plot", metavar="FILE",
                        help="also draw the placement as a PNG: one stacked bar per device per resource")


def run(args: argparse.Namespace, config: ConfigFile | None, verification: Verification | None = None) -> int:
    """``verification``: verify the demand plan device by device and re-plan without the groups that
    fail (``gpupack.app`` builds it from ``--verify``, since the verifier is the profiler's)."""
    settings = resolve_settings("plan", SETTINGS, config, os.environ, vars(args))
    started = _command_started(settings["time_limit"])
    profile = load_profile(args.profile)
    _every_model_placeable(profile, args.profile)
    deadline = Deadline(started + settings["time_limit"] - RESERVE_SECONDS - RESERVE_SECONDS_PER_MODEL * len(profile.models))
    policies = load_policies_if_given(settings["policies"])
    limits = _limits(settings["resources"], settings.said_by("resources"))
    series = args.demand_series or (args.demand_from_prometheus and args.step)
    if (args.schedule or args.forecast_weeks is not None) and not series:
        raise InputError("--schedule and --forecast-weeks plan a demand series: give --demand-series FILE, or "
                         "--demand-from-prometheus URL with --step")
    if args.latency_aware and (series or not (args.demand or args.demand_from_prometheus)):
        raise InputError("--latency-aware holds each model's p99 to the budget of a demand: give --demand FILE "
                         "(or --demand-from-prometheus URL), without a demand series")
    if verification is not None and (series or not (args.demand or args.demand_from_prometheus)):
        raise InputError("--verify replays each copy at the rate a demand plan sends it: give --demand FILE "
                         "(or --demand-from-prometheus URL), without a demand series")
    if series:
        if args.demand_series and (args.demand or args.demand_from_prometheus):
            raise InputError("give --demand-series FILE or --demand/--demand-from-prometheus, not both")
        from gpupack.scheduler.demand.series_cli import run_series

        # No second problem to build: only writing the table and exiting are kept back.
        return run_series(args, settings, profile, policies, lambda count: _devices(settings, profile, policies, count),
                          limits, started, Deadline(started + settings["time_limit"] - SERIES_RESERVE_SECONDS))
    if args.demand or args.demand_from_prometheus:
        from gpupack.scheduler.demand.cli import run_demand

        return run_demand(args, settings, profile, policies, lambda count: _devices(settings, profile, policies, count),
                          limits, started, deadline, verification)
    planned_devices = _devices(settings, profile, policies)
    devices = planned_devices.devices
    fleet = fleet_for(profile.models, devices, profile.server_baseline, planned_devices.servers)
    share = PLAN_SHARE if _at_full_capacity(policies) is not None else 1.0
    startup_seconds = timing.clock() - started
    forbidden = broken_groups(profile.colocations, {}, devices)
    planned = plan_under(compile_policies(policies, fleet), profile.models, devices,
                         profile.server_baseline, settings["objective"], left(deadline) * share,
                         soft_alerts=args.soft_alerts, limited=limits.limited, forbidden_groups=forbidden)
    problem, result = planned.problem, planned.result
    cost = None
    relaxed = _at_full_capacity(PolicySet(tuple(p for p in policies.policies if p.name in planned.kept)))
    if relaxed is not None:
        full = dataclasses.replace(build_problem(profile.models, devices, profile.server_baseline, relaxed[1],
                                                 servers=planned_devices.servers, limited=limits.limited),
                                   forbidden_groups=forbidden)
        cost = CapacityPolicyCost(relaxed[0], solve(full, settings["objective"], left(deadline)))
    render = render_json if args.format == "json" else render_table
    sys.stdout.write(render(problem, result, cost, limits, planned.broken_alerts,
                            TimeBudget(settings["time_limit"], startup_seconds)))
    if args.plot:
        from gpupack.scheduler.plot import plot_placement  # matplotlib only when asked

        plot_placement(problem, result, args.plot)
    return 0


def _every_model_placeable(profile: Profile, path: str) -> None:
    """A profile of nothing is a mistake (exit 2); a model measured with no configuration within its
    constraints makes every plan leave it out, so none is made (exit 1), naming it and why."""
    if not profile.models and not profile.unplaceable:
        raise InputError("the profile has no models to place", path=path)
    reasons = []
    for model in profile.unplaceable:
        rejected = profile.rejected[model]
        shown = ", ".join(f"{r.name}: {r.reason}" for r in rejected[:REASONS_SHOWN])
        more = f", and {len(rejected) - REASONS_SHOWN} more" if len(rejected) > REASONS_SHOWN else ""
        reasons.append(f"model {model} has no configuration within its constraints ({shown}{more})")
    if reasons:
        raise InfeasibleError(f"{'; '.join(reasons)}; see {path}")


def _command_started(time_limit_seconds: float) -> float:
    """When this command started, on the timing clock: at process start, since importing OR-Tools
    and HiGHS alone takes seconds on a busy machine; but when the process is older than the limit
    (plan called in-process, as tests do), at the call."""
    now = timing.clock()
    age = timing.process_age_seconds()
    return now - age if 0 <= age < time_limit_seconds else now


def left(deadline: Deadline) -> float:
    """Seconds a solve may take: what the deadline leaves, never nothing."""
    return max(deadline.remaining(), 0.05)


def _objectives(value: object) -> tuple[Objective, ...]:
    known = {o.value: o for o in Objective}
    parts = split_list(value)
    for part in parts:
        if part not in known:
            raise ValueError(f"{part!r} is not an objective (known: {', '.join(known)})")
    if not parts:
        raise ValueError(f"name at least one objective (known: {', '.join(known)})")
    return tuple(known[part] for part in parts)


def _resources(value: object) -> frozenset[Resource]:
    """The resources held to each device's capacity; memory must be one of them."""
    resources = frozenset(Resource.parse(part) for part in split_list(value))
    if Resource.GPU_MEMORY not in resources:
        raise ValueError("memory is always limited, since a model beyond it does not load: "
                         f"write memory,{','.join(sorted(r.short_name for r in resources)) or 'utilization'}")
    return resources


def _limits(limited: frozenset[Resource], said_by: str | None) -> Limits:
    """``said_by``: where the user chose the resources (a flag, a variable or a config-file line)."""
    if limited == ALL_RESOURCES:
        return Limits(limited)
    chosen = ",".join(r.short_name for r in Resource if r in limited)
    return Limits(limited, f"{said_by} {chosen}" if said_by and said_by.startswith("--") else f"{said_by}: {chosen}")


def _devices(settings: dict, profile: Profile, policies: PolicySet,
             default_count: int | None = None) -> PlannedDevices:
    if settings["devices_file"]:
        if settings["device_memory"] is not None or settings["devices"] is not None:
            raise InputError("--devices-file describes the devices itself: drop --device-memory and --devices")
        return load_devices(settings["devices_file"])
    if settings["device_memory"] is None:
        raise InputError("say what the devices are: --device-memory SIZE [--devices N], or --devices-file FILE")
    count = settings["devices"]
    if count is None and default_count is not None:
        count = default_count
    elif count is None:
        replicas = max([1] + [getattr(p, "count", 1) for p in policies.policies])
        count = max(1, len(profile.models) * replicas)
    return identical_devices(count, settings["device_memory"])


def _at_full_capacity(policies: PolicySet) -> tuple[tuple[str, ...], PolicySet] | None:
    """The policies with every capacity limit below 100% raised to 100%, or None if there is none."""
    tight = [p for p in policies.of_type(CapacityPolicy) if p.max_bytes is not None or p.max_ratio - p.headroom_ratio < 1]
    if not tight:
        return None
    full = [
        dataclasses.replace(p, max_ratio=1.0, max_bytes=None, headroom_ratio=0.0)
        if isinstance(p, CapacityPolicy) and p in tight else p
        for p in policies.policies
    ]
    return tuple(p.name for p in tight), PolicySet(tuple(full))
