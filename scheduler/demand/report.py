"""How ``gpupack plan --demand`` shows a plan: devices with the copies on them, each model's choice
against its demand, and the baselines beside it with the devices tuning saved.

JSON keeps base units (bytes, ratios 0-1, inferences per second); the table shows GiB and percent.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from gpupack.scheduler.demand.plan import DemandPlan
from gpupack.scheduler.verify_loop import VerifiedPlan
from gpupack.scheduler.demand.baselines import JOINT, TITLES, BaselineOutcome
from gpupack.scheduler.plan_report import (
    Limits, TimeBudget, columns, device_count_summary, device_table, limited_document, limits_document, limits_line,
    solve_document, time_line, totals_document,
)
from gpupack.units import counted


def saved(plan: DemandPlan, baselines: Sequence[BaselineOutcome]) -> dict[str, int]:
    """Devices the joint plan needs fewer than each feasible baseline."""
    return {b.name: b.result.device_count - plan.result.device_count for b in baselines if b.result is not None}


def render_table(plan: DemandPlan, baselines: Sequence[BaselineOutcome], limits: Limits,
                 budget: TimeBudget | None = None) -> str:
    result = plan.result
    cells = {device: [device, ", ".join(_copy(plan, m) for m in result.placement.models_on(device))]
             for device in result.device_totals}
    lines = device_table(plan.problem, result, ["device", "copies (model config rate/s)"], cells) + [""]
    header = ["model", "config", "copies", "capacity/s", "demand/s", "headroom"]
    rows = [[m.model, m.config, str(m.copies), f"{m.capacity_per_second:g}", f"{m.demand_per_second:g}",
             "-" if m.headroom_ratio is None else f"{m.headroom_ratio * 100:.0f}%"] for m in plan.models]
    lines += columns([header, *rows]) + ["", device_count_summary(result), limits_line(limits, result), ""]
    for baseline in (*baselines, None):
        lines.append(_baseline_line(baseline, plan))
    comparison = _saved_line(plan, baselines)
    if comparison:
        lines.append(comparison)
    parts = [("demand plan", result)] + [(f"baseline {k}", b.result) for k, b in enumerate(baselines, start=1)
                                         if b.result is not None]
    lines.append(time_line(parts, budget, phases=False))
    return "\n".join(lines) + "\n"


def _copy(plan: DemandPlan, model: str) -> str:
    return f"{model} {plan.configs[model]} {plan.rates[model]:g}"


def _saved_line(plan: DemandPlan, baselines: Sequence[BaselineOutcome]) -> str:
    """One sentence for what tuning for demand saves against each baseline that has a plan."""
    numbers = {b.name: k for k, b in enumerate(baselines, start=1)}
    parts = []
    for name, count in saved(plan, baselines).items():
        if count >= 0:
            parts.append(f"saves {counted(count, 'device') if count else 'no device'} against plan {numbers[name]}")
        else:
            parts.append(f"needs {counted(-count, 'more device')} than plan {numbers[name]}")
    return f"Tuning for demand (plan 3) {' and '.join(parts)}." if parts else ""


def _baseline_line(baseline: BaselineOutcome | None, plan: DemandPlan) -> str:
    name = baseline.name if baseline else JOINT
    result = baseline.result if baseline else plan.result
    if result is None:
        return f"{TITLES[name]}: infeasible ({baseline.infeasible_reason if baseline else ''})"
    return f"{TITLES[name]}: {device_count_summary(result)}"


def render_json(plan: DemandPlan, baselines: Sequence[BaselineOutcome], limits: Limits,
                budget: TimeBudget | None = None) -> str:
    return json.dumps(plan_document(plan, baselines, limits, budget), indent=2) + "\n"


def plan_document(plan: DemandPlan, baselines: Sequence[BaselineOutcome], limits: Limits,
                  budget: TimeBudget | None = None) -> dict[str, Any]:
    """The plan as ``--format json`` writes it (a verified plan adds its verification to it)."""
    result = plan.result
    by_name = {d.name: d for d in plan.problem.devices}
    document: dict[str, Any] = {
        "devices": [
            {
                "name": device,
                "copies": [{"model": m, "config": plan.configs[m], "rate_per_second": round(plan.rates[m], 6)}
                           for m in result.placement.models_on(device)],
                "totals": totals_document(totals),
                "limits": limits_document(plan.problem, by_name[device], totals),
            }
            for device, totals in result.device_totals.items()
        ],
        **solve_document(result),
        "limited_resources": limited_document(limits.limited),
        "models": [
            {"model": m.model, "config": m.config, "copies": m.copies,
             "capacity_per_second": round(m.capacity_per_second, 6), "demand_per_second": m.demand_per_second,
             "headroom_ratio": None if m.headroom_ratio is None else round(m.headroom_ratio, 6)}
            for m in plan.models
        ],
        "baselines": {
            b.name: ({"device_count": b.result.device_count, "lower_bound": b.result.lower_bound,
                      "optimal": b.result.optimal,
                      "proof": b.result.proof.as_dict() if b.result.proof is not None else None,
                      "solve_seconds": round(b.result.solve_seconds, 6)}
                     if b.result else {"infeasible": b.infeasible_reason})
            for b in baselines
        },
        "devices_saved": saved(plan, baselines),
    }
    if budget is not None:
        document["time_limit_seconds"] = budget.limit_seconds
        document["startup_seconds"] = round(budget.startup_seconds, 6)
    return document


def verification_lines(verified: VerifiedPlan[DemandPlan], where: str) -> list[str]:
    """Under the plan's table: each round and what it learned, then each device's verdict."""
    lines = [f"Verified {where}: {counted(len(verified.rounds), 'round')}, stopped: {verified.stopped}."]
    for r in verified.rounds:
        failed = ", ".join(f"{v.name} ({' + '.join(sorted(v.failed_group))})" for v in r.failed)
        learned = "; ".join(" + ".join(sorted(g)) for g in r.learned)
        lines.append(f"round {r.number}: {counted(len(r.verdicts), 'device')} ({r.replayed} replayed), "
                     f"{'failed: ' + failed if failed else 'all passed'}"
                     + (f"; never again on one device: {learned}" if learned else ""))
    passed = [d for d, ok in verified.verified.items() if ok]
    failing = [d for d, ok in verified.verified.items() if not ok]
    lines.append(f"verified: {', '.join(passed) or 'none'}" + (f"; not verified: {', '.join(failing)}" if failing else ""))
    return lines
