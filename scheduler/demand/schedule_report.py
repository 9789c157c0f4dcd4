"""How ``gpupack plan --demand-series --schedule`` shows a schedule: a timeline (step, devices,
moves), GPU-hours against the static plans and the bound, and where the time went. JSON gives
every step's devices with each copy's rate in that step, and the moves into it in a safe order,
and when step 0 begins (``start``, from the series), which ``gpupack rules run --schedule`` needs
to follow it. A week of a thousand models is tens of megabytes: the JSON is written compact, on
one line (json's C encoder, 6x faster than indenting; ``jq`` shows it indented), since writing
it counts against the plan's time limit."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from gpupack.demand_series import format_timestamp
from gpupack.scheduler.demand.schedule import SECONDS_PER_HOUR, Schedule
from gpupack.scheduler.demand.series_report import SeriesOutcome, devices_document
from gpupack.scheduler.plan_report import TimeBudget, columns, solve_document, time_line
from gpupack.units import counted


def render_table(outcome: SeriesOutcome, schedule: Schedule, budget: TimeBudget | None = None) -> str:
    rows = [["step", "devices", "bound", "moves"]]
    for t, step in enumerate(schedule.steps):
        rows.append([str(t), str(step.device_count), str(schedule.lower_bounds[t]), "-" if t == 0 else str(len(step.moves))])
    hours = _hours(outcome, schedule)
    lines = columns(rows) + [
        "",
        f"GPU-hours over {outcome.series.steps} steps of {outcome.series.step_seconds / SECONDS_PER_HOUR:g} h: "
        f"schedule {hours['schedule']:g} (lower bound {hours['bound']:g}, "
        f"{hours['schedule'] / hours['bound']:.2f}x); static by the peak of the sum {hours['static']:g} "
        f"({outcome.result.device_count} devices); by the sum of the peaks {hours['sum_of_peaks']:g} "
        f"({outcome.sum_of_peaks.result.device_count} devices).",
        f"The schedule uses {hours['schedule'] / hours['sum_of_peaks']:.0%} of the sum of the peaks' GPU-hours and "
        f"{hours['schedule'] / hours['static']:.0%} of the static plan's, with at most "
        f"{counted(max((len(s.moves) for s in schedule.steps), default=0), 'move')} between steps.",
        *([f"Note: {schedule.note}."] if schedule.note else []),
        *([f"Starts: step 0 at {format_timestamp(outcome.series.start_seconds)}."]
          if outcome.series.start_seconds is not None else []),
        time_line([("series plan", outcome.result), ("schedule", schedule),
                   ("sum of the peaks", outcome.sum_of_peaks.result)], budget, phases=False),
    ]
    return "\n".join(lines) + "\n"


def _hours(outcome: SeriesOutcome, schedule: Schedule) -> dict[str, float]:
    period = outcome.series.steps * outcome.series.step_seconds / SECONDS_PER_HOUR
    return {"schedule": round(schedule.gpu_hours, 6), "bound": round(schedule.bound_gpu_hours, 6),
            "static": round(outcome.result.device_count * period, 6),
            "sum_of_peaks": round(outcome.sum_of_peaks.result.device_count * period, 6)}


def render_json(outcome: SeriesOutcome, schedule: Schedule, budget: TimeBudget | None = None) -> str:
    hours = _hours(outcome, schedule)
    rates = _rates_per_copy(schedule)
    document: dict[str, Any] = {
        "step_seconds": outcome.series.step_seconds, "steps": outcome.series.steps,
        "start": None if outcome.series.start_seconds is None else format_timestamp(outcome.series.start_seconds),
        "schedule": _SCHEDULE,
        "gpu_hours": hours["schedule"], "gpu_hours_lower_bound": hours["bound"],
        "solve_seconds": round(schedule.solve_seconds, 6), "cut_short_at_step": schedule.cut_short_at_step,
        "note": schedule.note,
        "static": {**solve_document(outcome.result), "gpu_hours": hours["static"],
                   "devices": devices_document(outcome.plan)},
        "sum_of_peaks": {**solve_document(outcome.sum_of_peaks.result), "gpu_hours": hours["sum_of_peaks"]},
    }
    if budget is not None:
        document["time_limit_seconds"] = budget.limit_seconds
        document["startup_seconds"] = round(budget.startup_seconds, 6)
    # The steps are most of the document: each copy's object is written from its model's text and
    # the rate's (json's own float text), 5x faster than building and encoding a dict per copy.
    copy_text = [json.dumps({"model": o.model, "config": o.config.name, "rate_per_second": 0.0})[:-4]
                 for o in schedule.chosen]
    steps = ",".join(
        json.dumps({"step": t, "device_count": step.device_count, "lower_bound": int(schedule.lower_bounds[t]),
                    "devices": _SCHEDULE, "moves": [{"kind": m.kind, "model": m.model, "source": m.source,
                                                     "target": m.target} for m in step.moves]}).replace(
            _SCHEDULE_TEXT, _step_devices(schedule, t, copy_text, rates[:, t].tolist()), 1)
        for t, step in enumerate(schedule.steps))
    return json.dumps(document).replace(_SCHEDULE_TEXT, f"[{steps}]", 1) + "\n"


_SCHEDULE = "\x00schedule"  # where the steps' text goes (no name or text in a plan holds a NUL)
_SCHEDULE_TEXT = json.dumps(_SCHEDULE)


def _rates_per_copy(schedule: Schedule) -> np.ndarray:
    """[model, step]: what each copy of a model serves at a step (its step's rate over its copies then)."""
    total = np.array([o.rates_per_copy * o.copies for o in schedule.chosen], dtype=float).reshape(schedule.copies.shape)
    return np.round(total / schedule.copies, 6)


def _step_devices(schedule: Schedule, t: int, copy_text: list[str], rates: list[float]) -> str:
    """Step ``t``'s devices as JSON: each copy ``copy_text[model]`` followed by its rate."""
    on: dict[int, list[str]] = {}
    for m, devices in enumerate(schedule.steps[t].devices):
        text = f"{copy_text[m]}{float.__repr__(rates[m])}}}"
        for d in devices:
            on.setdefault(d, []).append(text)
    names = schedule.fleet.names
    return "[" + ",".join(f'{{"name": {json.dumps(names[d])}, "copies": [{",".join(on[d])}]}}' for d in sorted(on)) + "]"
