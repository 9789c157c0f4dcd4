"""`gpupack plan --demand FILE`: the plan for the traffic each model must serve, beside the plans
it is measured against (every model at its peak; the Model Analyzer way), each solved within the
time limit in the same run."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from gpupack.demand import ModelDemand, load_demand
from gpupack.scheduler.devices_file import PlannedDevices
from gpupack.errors import InputError
from gpupack.profiles import Profile
from gpupack.rules.policy import PolicySet
from gpupack.units import UnitError, parse_duration, parse_ratio
from gpupack.scheduler.constraints import build_problem
from gpupack.scheduler.demand.plan import demand_by_model, plan_for_demand
from gpupack.scheduler.demand.baselines import best_throughput_config, peak_one_copy
from gpupack.scheduler.demand.options import options_for
from gpupack.rules.demand_source import demand_from_prometheus
from gpupack.scheduler.demand.report import render_json, render_table
from gpupack.scheduler.packing.problem import Objective


def run_demand(args: argparse.Namespace, settings: dict, profile: Profile, policies: PolicySet | None,
               devices_for: Callable[[int], PlannedDevices]) -> int:
    demands, origin = _demands(args)
    known = {m.model for m in profile.models}
    for demand in demands:
        if demand.model not in known:
            raise InputError(f"model {demand.model!r} is not in the profile {args.profile}", path=origin)
    extra = args.extra_copies
    if extra < 0:
        raise InputError("--extra-copies: must be at least 0")
    planned = devices_for(_most_copies(profile, demands, extra))
    base = build_problem(profile.models, planned.devices, profile.server_baseline, policies, servers=planned.servers)
    objectives, time_limit = settings["objective"], settings["time_limit"]
    plan = plan_for_demand(profile, demands, base, objectives, time_limit, extra)
    primary = objectives[0] if objectives[0] in (Objective.MIN_DEVICES, Objective.MIN_COST) else Objective.MIN_DEVICES
    baselines = [peak_one_copy(profile, base, primary, time_limit),
                 best_throughput_config(profile, demands, base, primary, time_limit)]
    render = render_json if args.format == "json" else render_table
    sys.stdout.write(render(plan, baselines))
    return 0


def _demands(args: argparse.Namespace) -> tuple[tuple[ModelDemand, ...], str]:
    if args.demand and args.demand_from_prometheus:
        raise InputError("give --demand FILE or --demand-from-prometheus URL, not both")
    if args.demand:
        return load_demand(args.demand), args.demand
    try:
        window, headroom = parse_duration(args.window), parse_ratio(args.headroom)
    except UnitError as e:
        raise InputError(f"--window/--headroom: {e}") from e
    if window <= 0:
        raise InputError("--window: must be above 0")
    return demand_from_prometheus(args.demand_from_prometheus, window, headroom), f"Prometheus {args.demand_from_prometheus}"


def _most_copies(profile: Profile, demands: tuple[ModelDemand, ...], extra_copies: int) -> int:
    """Enough identical devices for every model's largest copy count, each copy alone."""
    total = 0
    for model, demand in zip(profile.models, demand_by_model(profile, demands)):
        options, _ = options_for(demand, profile.configs_of(model), extra_copies=extra_copies)
        total += max((o.copies for o in options), default=1)
    return max(total, 1)
