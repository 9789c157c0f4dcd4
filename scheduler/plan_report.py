"""How ``gpupack plan`` shows a placement: a table like the article's, or JSON for tools.

The table shows memory in IEC units (GiB, MiB) and ratios in percent, and beside each resource
its share of the device's limit (capacity, or a policy's lower limit), so an overfull device is
seen at once; JSON keeps base units (bytes, ratios 0-1, seconds).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Protocol, Sequence

from gpupack.domain import Device, Resource
from gpupack.scheduler.packing.problem import PlacementProblem, PlacementResult, ProofStatus
from gpupack.units import counted, format_bytes, format_percent

RESOURCE_TITLES = {
    Resource.GPU_MEMORY: "gpu memory with server",
    Resource.GPU_UTILIZATION: "gpu util",
    Resource.MEMORY_BANDWIDTH_UTILIZATION: "memory bandwidth util",
}
SHARE_TITLE = "% of limit"


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


@dataclass(frozen=True)
class Limits:
    """Which resources the plan holds to each device's capacity, and where the user chose them, as
    written (``--resources memory``, ``plan.resources in gpupack.yaml:3: memory``; None: the
    default, every resource)."""

    limited: frozenset[Resource]
    chosen_by: str | None = None


def total_field(resource: Resource) -> str:
    return resource.profile_field.removeprefix("peak_")


def shown_total(resource: Resource, value: float) -> str:
    return format_bytes(value) if resource.is_bytes else format_percent(value)


def device_table(problem: PlacementProblem, result: PlacementResult, first: Sequence[str],
                 cells: Mapping[str, Sequence[str]]) -> list[str]:
    """The devices as aligned rows: ``first`` titles the columns ``cells`` gives per device, then
    each resource's total and its share of the device's limit ("-" where nothing limits it)."""
    resources = resources_shown(result)
    by_name = {d.name: d for d in problem.devices}
    header = [*first, *(title for r in resources for title in (RESOURCE_TITLES[r], SHARE_TITLE))]
    rows = [[*cells[device],
             *(cell for r in resources for cell in _resource_cells(problem, by_name[device], r, totals[r]))]
            for device, totals in result.device_totals.items()]
    return columns([header, *rows])


def _resource_cells(problem: PlacementProblem, device: Device, resource: Resource, total: float) -> tuple[str, str]:
    limit = problem.limit(device, resource)
    share = format_percent(total / limit) if math.isfinite(limit) and limit > 0 else "-"
    return shown_total(resource, total), share


def columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def limits_line(limits: Limits, result: PlacementResult) -> str:
    """What the plan holds each device to, in the words ``--resources`` takes."""
    measured = resources_shown(result)
    held = [r.short_name for r in measured if r in limits.limited]
    free = [r.short_name for r in measured if r not in limits.limited]
    if not free:
        return f"Limits: 100% of each device's {_listed(held)}, or a policy's lower limit."
    return (f"Limits: {_listed(held)} only ({limits.chosen_by}); {_listed(free)} not limited "
            f"unless a policy limits {'it' if len(free) == 1 else 'them'}.")


def _listed(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def render_table(
    problem: PlacementProblem, result: PlacementResult, cost: CapacityPolicyCost | None, limits: Limits,
    broken_alerts: tuple[str, ...] = (), budget: TimeBudget | None = None,
) -> str:
    cells = {device: [device, ", ".join(result.placement.models_on(device))] for device in result.device_totals}
    lines = device_table(problem, result, ["device", "models"], cells)
    lines += ["", device_count_summary(result), limits_line(limits, result)]
    if cost is not None:
        lines.append(_cost_line(result, cost))
    if broken_alerts:
        lines.append(f"Alert policies this plan breaks (no plan keeps them all): {', '.join(broken_alerts)}.")
    parts = [("", result)] if cost is None else [("under the policies", result), ("at 100% of capacity", cost.result)]
    lines.append(time_line(parts, budget))
    return "\n".join(lines) + "\n"


def device_count_summary(result: PlacementResult) -> str:
    if result.proof is not None:
        proof = result.proof.describe()
        if result.proof.status is ProofStatus.OPTIMAL and not result.optimal:
            proof += "; later objectives not proven optimal"
    else:
        proof = "proven optimal" if result.optimal else f"not proven optimal, lower bound {result.lower_bound}"
    return f"{counted(result.device_count, 'device')} ({proof}; {result.method})"


def _phases(result: Solved) -> str:
    return ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in result.seconds_by_phase.items())


class Solved(Protocol):
    """What the ``Time:`` line reads of a solve: a placement's result, or a schedule's."""

    @property
    def solve_seconds(self) -> float: ...

    @property
    def seconds_by_phase(self) -> Mapping[str, float]: ...


def time_line(parts: Sequence[tuple[str, Solved]], budget: TimeBudget | None, phases: bool = True) -> str:
    """Where the command's time went: start-up, then each solve by name (one unnamed: its phases),
    with its phases unless they describe only the last step of a longer plan (``phases`` False)."""
    solving = sum(result.solve_seconds for _, result in parts)
    if budget is None:
        text = f"Time: solving {solving:.2f} s"
    else:
        text = (f"Time: {budget.startup_seconds + solving:.2f} s of the {budget.limit_seconds:g} s limit "
                f"(startup {budget.startup_seconds:.2f} s, solving {solving:.2f} s)")
    if len(parts) == 1 and not parts[0][0]:
        return f"{text}: {_phases(parts[0][1])}."
    return f"{text}: " + "; ".join(f"{name} {r.solve_seconds:.2f} s" + (f" ({_phases(r)})" if phases else "")
                                   for name, r in parts) + "."


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
    return f"Capacity policies {names} cost {counted(extra, 'more device')}: {result.device_count} under them, {full}."


def render_json(
    problem: PlacementProblem, result: PlacementResult, cost: CapacityPolicyCost | None, limits: Limits,
    broken_alerts: tuple[str, ...] = (), budget: TimeBudget | None = None,
) -> str:
    by_name = {d.name: d for d in problem.devices}
    document: dict[str, Any] = {
        "devices": [
            {"name": device, "models": list(result.placement.models_on(device)), "totals": totals_document(totals),
             "limits": limits_document(problem, by_name[device], totals)}
            for device, totals in result.device_totals.items()
        ],
        **solve_document(result),
        "limited_resources": limited_document(limits.limited),
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


def limits_document(problem: PlacementProblem, device: Device,
                    totals: Mapping[Resource, float]) -> dict[str, float | None]:
    """Each resource's limit on the device, as its totals are written; null where nothing limits it."""
    limits = {r: problem.limit(device, r) for r in totals}
    return {total_field(r): (int(v) if r.is_bytes else round(v, 6)) if math.isfinite(v) else None
            for r, v in limits.items()}


def limited_document(limited: Collection[Resource]) -> list[str]:
    return [r.value for r in Resource if r in limited]


def solve_document(result: PlacementResult) -> dict[str, Any]:
    """What the JSON of every plan (by policies or by demand) says of its solve."""
    return {"device_count": result.device_count, "lower_bound": result.lower_bound, "optimal": result.optimal,
            "proof": result.proof.as_dict() if result.proof is not None else None,
            "solve_seconds": round(result.solve_seconds, 6), "method": result.method}


def resources_shown(result: PlacementResult) -> list[Resource]:
    present = {r for totals in result.device_totals.values() for r in totals}
    return [r for r in Resource if r in present]
