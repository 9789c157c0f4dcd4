"""How ``gpupack plan --demand-series`` shows a plan: the devices with the copies on them (each at
its busiest step), the plan by the peak of the sum beside the plan by the sum of the peaks, and
where the time went. JSON keeps base units and gives every step: each copy's rate and each
device's totals."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpupack.demand_series import DemandSeries
from gpupack.scheduler.demand.plan import DemandPlan
from gpupack.scheduler.demand.series import RESOURCES, SeriesPlan
from gpupack.scheduler.demand.series_result import totals_per_step
from gpupack.scheduler.packing.problem import PlacementProblem, PlacementResult
from gpupack.scheduler.plan_report import (
    Limits, TimeBudget, device_count_summary, device_table, limited_document, limits_line, solve_document, time_line,
    total_field,
)
from gpupack.units import counted


@dataclass(frozen=True)
class SeriesOutcome:
    series: DemandSeries
    problem: PlacementProblem  # the devices and limits planned on
    plan: SeriesPlan
    result: PlacementResult  # the plan as reports see one
    sum_of_peaks: DemandPlan  # every model at its own peak, by the demand plan


def render_table(outcome: SeriesOutcome, limits: Limits, budget: TimeBudget | None = None) -> str:
    plan, result = outcome.plan, outcome.result
    names = plan.fleet.names
    on_device: dict[str, list[str]] = {names[d]: [] for d in plan.used()}
    for option, devices in zip(plan.chosen, plan.devices):
        for d in devices:
            on_device[names[d]].append(f"{option.model} {option.config.name} {option.rates_per_copy.max(initial=0):g}")
    cells = {device: [device, ", ".join(copies)] for device, copies in on_device.items()}
    lines = device_table(outcome.problem, result, ["device", "copies (model config peak rate/s)"], cells)
    lines += ["(each device at its busiest step per resource)", "",
              f"by the peak of the sum, {counted(outcome.series.steps, 'step')} of "
              f"{outcome.series.step_seconds:g} s: {device_count_summary(result)}",
              limits_line(limits, result),
              f"by the sum of the peaks (every model at its own peak): {device_count_summary(outcome.sum_of_peaks.result)}",
              _saved_line(outcome),
              time_line([("series plan", result), ("sum of the peaks", outcome.sum_of_peaks.result)], budget,
                        phases=False)]
    return "\n".join(lines) + "\n"


def _saved_line(outcome: SeriesOutcome) -> str:
    ours, theirs = outcome.result.device_count, outcome.sum_of_peaks.result.device_count
    if ours < theirs:
        return (f"Packing by the peak of the sum saves {counted(theirs - ours, 'device')} "
                f"({(theirs - ours) / theirs:.0%}) against the sum of the peaks.")
    if ours == theirs:
        return "Packing by the peak of the sum saves no device against the sum of the peaks."
    return f"Packing by the peak of the sum needs {counted(ours - theirs, 'more device')} than the sum of the peaks."


def render_json(outcome: SeriesOutcome, limits: Limits, budget: TimeBudget | None = None) -> str:
    document = {"step_seconds": outcome.series.step_seconds, "steps": outcome.series.steps,
                "devices": devices_document(outcome.plan), **solve_document(outcome.result),
                "limited_resources": limited_document(limits.limited),
                "sum_of_peaks": solve_document(outcome.sum_of_peaks.result),
                "devices_saved": outcome.sum_of_peaks.result.device_count - outcome.result.device_count}
    if budget is not None:
        document["time_limit_seconds"] = budget.limit_seconds
        document["startup_seconds"] = round(budget.startup_seconds, 6)
    return json.dumps(document, indent=2) + "\n"


def devices_document(plan: SeriesPlan) -> list[dict[str, Any]]:
    names, totals = plan.fleet.names, totals_per_step(plan)
    measured = [k for k, r in enumerate(RESOURCES) if k == 0 or any(o.cost[k].any() for o in plan.chosen)]
    copies: dict[int, list[dict[str, Any]]] = {d: [] for d in plan.used()}
    for option, devices in zip(plan.chosen, plan.devices):
        rates = np.round(option.rates_per_copy, 6).tolist()  # a week of 1,000 models: 1.1 s one number at a time
        for d in devices:
            copies[d].append({"model": option.model, "config": option.config.name, "rate_per_second": rates})
    return [{"name": names[d], "copies": copies[d],
             "totals_per_step": {total_field(RESOURCES[k]): _totals(RESOURCES[k].is_bytes, totals[d][k])
                                 for k in measured}}
            for d in plan.used()]


def _totals(is_bytes: bool, values: np.ndarray) -> list[float] | list[int]:
    return values.astype(np.int64).tolist() if is_bytes else np.round(values, 6).tolist()
