"""How ``gpupack plan --demand`` shows a plan: devices with the copies on them, each model's choice
against its demand, and the baselines beside it with the devices tuning saved.

JSON keeps base units (bytes, ratios 0-1, inferences per second); the table shows MB and percent.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from gpupack.scheduler.demand.plan import DemandPlan
from gpupack.scheduler.demand.baselines import JOINT, TITLES, BaselineOutcome
from gpupack.scheduler.plan_report import (
    RESOURCE_TITLES, device_count_summary, resources_shown, shown_total, solve_document, totals_document,
)


def saved(plan: DemandPlan, baselines: Sequence[BaselineOutcome]) -> dict[str, int]:
    """Devices the joint plan needs fewer than each feasible baseline."""
    return {b.name: b.result.device_count - plan.result.device_count for b in baselines if b.result is not None}


def render_table(plan: DemandPlan, baselines: Sequence[BaselineOutcome]) -> str:
    result = plan.result
    resources = resources_shown(result)
    header = ["device", "copies (model config rate/s)", *(RESOURCE_TITLES[r] for r in resources)]
    rows = [
        [device, ", ".join(_copy(plan, m) for m in result.placement.models_on(device)),
         *(shown_total(r, totals[r]) for r in resources)]
        for device, totals in result.device_totals.items()
    ]
    lines = _columns([header, *rows]) + [""]
    header = ["model", "config", "copies", "capacity/s", "demand/s", "headroom"]
    rows = [[m.model, m.config, str(m.copies), f"{m.capacity_per_second:g}", f"{m.demand_per_second:g}",
             "-" if m.headroom_ratio is None else f"{m.headroom_ratio * 100:.0f}%"] for m in plan.models]
    lines += _columns([header, *rows]) + ["", device_count_summary(result), ""]
    for baseline in (*baselines, None):
        lines.append(_baseline_line(baseline, plan))
    for name, count in saved(plan, baselines).items():
        lines.append(f"Tuning for demand saves {count} device{'s' if abs(count) != 1 else ''} against {TITLES[name][3:]}.")
    return "\n".join(lines) + "\n"


def _copy(plan: DemandPlan, model: str) -> str:
    return f"{model} {plan.configs[model]} {plan.rates[model]:g}"


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _baseline_line(baseline: BaselineOutcome | None, plan: DemandPlan) -> str:
    name = baseline.name if baseline else JOINT
    result = baseline.result if baseline else plan.result
    if result is None:
        return f"{TITLES[name]}: infeasible ({baseline.infeasible_reason if baseline else ''})"
    proof = "proven" if result.optimal else f"lower bound {result.lower_bound}"
    return f"{TITLES[name]}: {result.device_count} devices ({proof})"


def render_json(plan: DemandPlan, baselines: Sequence[BaselineOutcome]) -> str:
    result = plan.result
    document: dict[str, Any] = {
        "devices": [
            {
                "name": device,
                "copies": [{"model": m, "config": plan.configs[m], "rate_per_second": round(plan.rates[m], 6)}
                           for m in result.placement.models_on(device)],
                "totals": totals_document(totals),
            }
            for device, totals in result.device_totals.items()
        ],
        **solve_document(result),
        "models": [
            {"model": m.model, "config": m.config, "copies": m.copies,
             "capacity_per_second": round(m.capacity_per_second, 6), "demand_per_second": m.demand_per_second,
             "headroom_ratio": None if m.headroom_ratio is None else round(m.headroom_ratio, 6)}
            for m in plan.models
        ],
        "baselines": {
            b.name: ({"device_count": b.result.device_count, "lower_bound": b.result.lower_bound,
                      "optimal": b.result.optimal} if b.result else {"infeasible": b.infeasible_reason})
            for b in baselines
        },
        "devices_saved": saved(plan, baselines),
    }
    return json.dumps(document, indent=2) + "\n"
