"""How ``gpupack plan`` shows a placement: a table like the article's, or JSON for tools.

Memory is shown in MB (10^6 bytes, as Model Analyzer and the article print it) and ratios in
percent; JSON keeps base units (bytes, ratios 0-1, seconds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from gpupack.domain import Resource
from gpupack.scheduler.packing.problem import PlacementResult, ProofStatus

RESOURCE_TITLES = {
    Resource.GPU_MEMORY: "gpu memory with server (MB)",
    Resource.GPU_UTILIZATION: "gpu util (%)",
    Resource.MEMORY_BANDWIDTH_UTILIZATION: "memory bandwidth util (%)",
}


@dataclass(frozen=True)
class CapacityPolicyCost:
    """The same plan with every capacity policy raised to 100%: what the policies cost in devices."""

    policies: tuple[str, ...]
    result: PlacementResult


@dataclass(frozen=True)
class TimeBudget:
    """The command's time limit, and what went before the first solve (imports, reading inputs)."""

    limit_seconds: float
    startup_seconds: float


def total_field(resource: Resource) -> str:
    return resource.profile_field.removeprefix("peak_")


def shown_total(resource: Resource, value: float) -> str:
    return f"{value / 1e6:.0f}" if resource.is_bytes else f"{value * 100:.0f}"


def render_table(
    result: PlacementResult, cost: CapacityPolicyCost | None, broken_alerts: tuple[str, ...] = (),
    budget: TimeBudget | None = None,
) -> str:
    resources = resources_shown(result)
    header = ["device", "models", *(RESOURCE_TITLES[r] for r in resources)]
    rows = [
        [device, ", ".join(result.placement.models_on(device)), *(shown_total(r, totals[r]) for r in resources)]
        for device, totals in result.device_totals.items()
    ]
    widths = [max(len(str(row[k])) for row in [header, *rows]) for k in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines += ["", device_count_summary(result)]
    if cost is not None:
        lines.append(_cost_line(result, cost))
    if broken_alerts:
        lines.append(f"Alert policies this plan breaks (no plan keeps them all): {', '.join(broken_alerts)}.")
    lines.append(_time_line(result, cost, budget))
    return "\n".join(lines) + "\n"


def device_count_summary(result: PlacementResult) -> str:
    plural = "s" if result.device_count != 1 else ""
    if result.proof is not None:
        proof = result.proof.describe()
        if result.proof.status is ProofStatus.OPTIMAL and not result.optimal:
            proof += "; later objectives not proven optimal"
    else:
        proof = "proven optimal" if result.optimal else f"not proven optimal, lower bound {result.lower_bound}"
    return f"{result.device_count} device{plural} ({proof}; {result.method})"


def _phases(result: PlacementResult) -> str:
    return ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in result.seconds_by_phase.items())


def _time_line(result: PlacementResult, cost: CapacityPolicyCost | None, budget: TimeBudget | None) -> str:
    solving = result.solve_seconds + (cost.result.solve_seconds if cost is not None else 0.0)
    if budget is None:
        text = f"Time: solving {solving:.2f} s"
    else:
        text = (f"Time: {budget.startup_seconds + solving:.2f} s of the {budget.limit_seconds:g} s limit "
                f"(startup {budget.startup_seconds:.2f} s, solving {solving:.2f} s)")
    if cost is None:
        return f"{text}: {_phases(result)}."
    return (f"{text}: under the policies {result.solve_seconds:.2f} s ({_phases(result)}); "
            f"at 100% of capacity {cost.result.solve_seconds:.2f} s ({_phases(cost.result)}).")


def _cost_line(result: PlacementResult, cost: CapacityPolicyCost) -> str:
    extra = result.device_count - cost.result.device_count
    names = ", ".join(cost.policies)
    proof = cost.result.proof
    proven = cost.result.optimal if proof is None else proof.status is ProofStatus.OPTIMAL
    full = f"{cost.result.device_count} at 100% of capacity" + (
        "" if proven else f" ({proof.describe() if proof is not None else 'not proven optimal'})"
    )
    if extra <= 0:
        return f"Capacity policies {names} cost no extra device: {full}."
    return f"Capacity policies {names} cost {extra} more device{'s' if extra != 1 else ''}: {result.device_count} under them, {full}."


def render_json(
    result: PlacementResult, cost: CapacityPolicyCost | None, broken_alerts: tuple[str, ...] = (),
    budget: TimeBudget | None = None,
) -> str:
    document: dict[str, Any] = {
        "devices": [
            {"name": device, "models": list(result.placement.models_on(device)), "totals": totals_document(totals)}
            for device, totals in result.device_totals.items()
        ],
        **solve_document(result),
        "proof": result.proof.as_dict() if result.proof is not None else None,
        "seconds_by_phase": {name: round(v, 6) for name, v in result.seconds_by_phase.items()},
        "alert_policies_broken": list(broken_alerts),
    }
    if budget is not None:
        document["time_limit_seconds"] = budget.limit_seconds
        document["startup_seconds"] = round(budget.startup_seconds, 6)
    if cost is not None:
        document["at_full_capacity"] = {
            "policies": list(cost.policies),
            "device_count": cost.result.device_count,
            "optimal": cost.result.optimal,
            "extra_devices": result.device_count - cost.result.device_count,
            "proof": cost.result.proof.as_dict() if cost.result.proof is not None else None,
            "solve_seconds": round(cost.result.solve_seconds, 6),
            "seconds_by_phase": {name: round(v, 6) for name, v in cost.result.seconds_by_phase.items()},
        }
    return json.dumps(document, indent=2) + "\n"


def totals_document(totals: Mapping[Resource, float]) -> dict[str, float]:
    """A device's totals as JSON carries them: whole bytes, ratios to six places."""
    return {total_field(r): int(v) if r.is_bytes else round(v, 6) for r, v in totals.items()}


def solve_document(result: PlacementResult) -> dict[str, Any]:
    """What the JSON of every plan (by policies or by demand) says of its solve."""
    return {"device_count": result.device_count, "lower_bound": result.lower_bound, "optimal": result.optimal,
            "solve_seconds": round(result.solve_seconds, 6), "method": result.method}


def resources_shown(result: PlacementResult) -> list[Resource]:
    present = {r for totals in result.device_totals.values() for r in totals}
    return [r for r in Resource if r in present]
