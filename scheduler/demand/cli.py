"""`gpupack plan --demand FILE`: the plan for the traffic each model must serve, beside the plans
it is measured against (every model at its peak; the Model Analyzer way), each solved within the
time limit in the same run."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from gpupack import timing
from gpupack.demand import ModelDemand, load_demand
from gpupack.scheduler.devices_file import PlannedDevices
from gpupack.errors import InputError
from gpupack.profiles import Profile
from gpupack.rules.policy import PolicySet
from gpupack.timing import Deadline
from gpupack.units import UnitError, parse_duration, parse_ratio
from gpupack.scheduler.constraints import build_problem
from gpupack.scheduler.demand.plan import demand_by_model, plan_for_demand
from gpupack.scheduler.demand.baselines import best_throughput_config, peak_one_copy
from gpupack.scheduler.demand.options import options_for
from gpupack.rules.demand_source import demand_from_prometheus
from gpupack.scheduler.demand.report import render_json, render_table
from gpupack.scheduler.packing.problem import Objective
from gpupack.scheduler.plan_report import Limits, TimeBudget

# The demand plan is the answer; the baselines only say what it saves, and are quick to prove.
PLAN_SHARE = 0.6
LEAST_SOLVE_SECONDS = 0.1


def run_demand(args: argparse.Namespace, settings: dict, profile: Profile, policies: PolicySet | None,
               devices_for: Callable[[int], PlannedDevices], limits: Limits, started: float,
               deadline: Deadline) -> int:
    """``started``: when the command started, on the timing clock; ``deadline``: when every solve must end."""
    demands, origin = _demands(args)
    known = {m.model for m in profile.models}
    for demand in demands:
        if demand.model not in known:
            raise InputError(f"model {demand.model!r} is not in the profile {args.profile}", path=origin)
    extra = args.extra_copies
    if extra < 0:
        raise InputError("--extra-copies: must be at least 0")
    planned = devices_for(most_copies(profile, demands, extra))
    base = build_problem(profile.models, planned.devices, profile.server_baseline, policies, servers=planned.servers,
                         limited=limits.limited)
    objectives = settings["objective"]
    startup_seconds = timing.clock() - started
    plan = plan_for_demand(profile, demands, base, objectives, _seconds(deadline, PLAN_SHARE), extra)
    primary = objectives[0] if objectives[0] in (Objective.MIN_DEVICES, Objective.MIN_COST) else Objective.MIN_DEVICES
    baselines = [peak_one_copy(profile, base, primary, _seconds(deadline, 0.5)),
                 best_throughput_config(profile, demands, base, primary, _seconds(deadline, 1.0))]
    render = render_json if args.format == "json" else render_table
    sys.stdout.write(render(plan, baselines, limits, TimeBudget(settings["time_limit"], startup_seconds)))
    if args.plot:
        from gpupack.scheduler.plot import plot_placement  # matplotlib only when asked

        plot_placement(plan.problem, plan.result, args.plot)
    return 0


def _seconds(deadline: Deadline, share: float) -> float:
    return max(deadline.remaining() * share, LEAST_SOLVE_SECONDS)


def _demands(args: argparse.Namespace) -> tuple[tuple[ModelDemand, ...], str]:
    if args.demand and args.demand_from_prometheus:
        raise InputError("give --demand FILE or --demand-from-prometheus URL, not both")
    if args.demand:
        return load_demand(args.demand), args.demand
    window, headroom = flag("--window", parse_duration, args.window), flag("--headroom", parse_ratio, args.headroom)
    if window <= 0:
        raise InputError("--window: must be above 0")
    return demand_from_prometheus(args.demand_from_prometheus, window, headroom), f"Prometheus {args.demand_from_prometheus}"


def flag(name: str, parse: Callable[[str], float], value: str) -> float:
    try:
        return parse(value)
    except UnitError as e:
        raise InputError(f"{name}: {e}") from e


def most_copies(profile: Profile, demands: tuple[ModelDemand, ...], extra_copies: int) -> int:
    """Enough identical devices for every model's largest copy count, each copy alone."""
    total = 0
    for model, demand in zip(profile.models, demand_by_model(profile, demands)):
        options, _ = options_for(demand, profile.configs_of(model), extra_copies=extra_copies)
        total += max((o.copies for o in options), default=1)
    return max(total, 1)
