"""`gpupack plan --demand FILE`: the plan for the traffic each model must serve, beside the plans
it is measured against (every model at its peak; the Model Analyzer way), each solved within the
time limit in the same run. With a verifier (``--verify``), the plan is replayed device by device
and re-made without the groups that failed (``gpupack.scheduler.verify_loop``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from gpupack.scheduler.colocations import broken_groups
from gpupack.scheduler.constraints import build_problem
from gpupack.scheduler.demand.plan import demand_by_model, plan_for_demand
from gpupack.scheduler.demand.baselines import best_throughput_config, peak_one_copy
from gpupack.scheduler.demand.options import options_for
from gpupack.rules.demand_source import demand_from_prometheus
from gpupack.scheduler.demand.report import plan_document, render_table, verification_lines
from gpupack.scheduler.demand.plan import DemandPlan
from gpupack.scheduler.packing.problem import Objective, PlacementProblem
from gpupack.scheduler.plan_report import Limits, TimeBudget, totals_document
from gpupack.scheduler.verify_loop import Verification, VerifiedPlan, verify_plan
from gpupack.verification import PlannedCopy, PlannedDevice

# The demand plan is the answer; the baselines only say what it saves, and are quick to prove.
PLAN_SHARE = 0.6
LEAST_SOLVE_SECONDS = 0.1


def run_demand(args: argparse.Namespace, settings: dict, profile: Profile, policies: PolicySet | None,
               devices_for: Callable[[int], PlannedDevices], limits: Limits, started: float,
               deadline: Deadline, verification: Verification | None = None) -> int:
    """``started``: when the command started, on the timing clock; ``deadline``: when every solve must
    end (with ``verification``, every solve but the re-plans, which each get the plan's share of the
    time limit). Exit 1 when a plan was verified and some device did not pass."""
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
    base = _forbidding(base, broken_groups(profile.colocations, {d.model: d.latency_p99_seconds for d in demands},
                                           planned.devices))
    objectives = settings["objective"]
    startup_seconds = timing.clock() - started
    verified: VerifiedPlan[DemandPlan] | None = None
    if verification is None:
        plan = plan_for_demand(profile, demands, base, objectives, _seconds(deadline, PLAN_SHARE), extra,
                               args.latency_aware)
    else:
        seconds = settings["time_limit"] * PLAN_SHARE
        budgets = {d.model: d.latency_p99_seconds for d in demands}

        def plan_with(forbidden: tuple[frozenset[str], ...]) -> DemandPlan:
            return plan_for_demand(profile, demands, _forbidding(base, forbidden), objectives, seconds, extra,
                                   args.latency_aware)

        verified = verify_plan(plan_with, lambda p: planned_devices(p, budgets), verification.verifier,
                               Deadline.after(verification.time_limit_seconds), base.forbidden_groups,
                               progress=lambda line: print(line, file=sys.stderr, flush=True))
        plan = verified.plan
        base = _forbidding(base, verified.forbidden_groups)
        # The baselines are solved after the loop, on what the time limit leaves of a fresh start.
        deadline = Deadline.after(settings["time_limit"] * (1 - PLAN_SHARE))
    primary = objectives[0] if objectives[0] in (Objective.MIN_DEVICES, Objective.MIN_COST) else Objective.MIN_DEVICES
    baselines = [peak_one_copy(profile, base, primary, _seconds(deadline, 0.5)),
                 best_throughput_config(profile, demands, base, primary, _seconds(deadline, 1.0))]
    budget = TimeBudget(settings["time_limit"], startup_seconds)
    if args.format == "json":
        document = plan_document(plan, baselines, limits, budget)
        if verified is not None:
            _add_verification(document, verified)
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        text = render_table(plan, baselines, limits, budget)
        if verified is not None and verification is not None:
            text += "\n".join(verification_lines(verified, verification.described)) + "\n"
        sys.stdout.write(text)
    if args.plot:
        from gpupack.scheduler.plot import plot_placement  # matplotlib only when asked

        plot_placement(plan.problem, plan.result, args.plot)
    return 0 if verified is None or verified.every_device_verified else 1


def planned_devices(plan: DemandPlan, budgets: dict[str, float | None]) -> list[PlannedDevice]:
    """A demand plan's devices as the verifier replays them: each copy at the rate the plan sends it."""
    predicted = {device: totals_document(totals) for device, totals in plan.result.device_totals.items()}
    return [PlannedDevice(device, tuple(PlannedCopy(m, plan.configs[m], plan.rates[m], budgets.get(m))
                                        for m in plan.result.placement.models_on(device)), predicted[device])
            for device in plan.result.device_totals]


def _forbidding(base: PlacementProblem, groups: tuple[frozenset[str], ...]) -> PlacementProblem:
    return dataclasses.replace(base, forbidden_groups=tuple(dict.fromkeys((*base.forbidden_groups, *groups))))


def _add_verification(document: dict, verified: VerifiedPlan[DemandPlan]) -> None:
    """The plan's JSON as without verification, plus each device's ``verified`` and the rounds."""
    for device in document["devices"]:
        device["verified"] = verified.verified.get(device["name"], False)
    document["verification_rounds"] = [r.document() for r in verified.rounds]
    document["forbidden_groups"] = [sorted(g) for g in verified.forbidden_groups]
    document["verification_stopped"] = verified.stopped


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
