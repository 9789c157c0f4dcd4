"""The series for the coming period, built from history: per model and step, the highest rate of
the same step in the last ``periods`` periods (a week of hourly steps: the same hour of the same
weekday), times one plus the headroom. A step that was busy in any recent week is planned busy;
what none of them saw (a new burst, growth beyond the headroom) is left to the live guard, the
throughput policy. :func:`exceeded_share` measures how often that happens on held-out periods.

The forecast begins where the history ends: a history anchored in time (``start``) gives a forecast
anchored at its end, so the schedule planned from it can be followed as it comes."""

from __future__ import annotations

import numpy as np

from gpupack.demand_series import DemandSeries
from gpupack.errors import InputError
from gpupack.units import counted


def forecast(history: DemandSeries, period_steps: int, periods: int, headroom_ratio: float) -> DemandSeries:
    """Raises :class:`InputError` when the history holds fewer than ``periods`` whole periods."""
    if periods < 1:
        raise InputError("--forecast-weeks: must be at least 1")
    if history.steps < period_steps * periods:
        raise InputError(f"forecasting from {counted(periods, 'week')} needs {period_steps * periods} steps of "
                         f"history; there are {history.steps}")
    rates = {}
    for model, series in history.rates_per_second.items():
        recent = np.array(series[history.steps - period_steps * periods:]).reshape(periods, period_steps)
        rates[model] = tuple(float(r) for r in recent.max(axis=0) * (1 + headroom_ratio))
    start = None if history.start_seconds is None else history.start_seconds + history.steps * history.step_seconds
    return DemandSeries(history.step_seconds, rates, history.latency_p99_seconds, start)


def exceeded_share(placed_per_second: DemandSeries, actual: DemandSeries) -> float:
    """The share of (model, step) pairs whose actual demand exceeded what was placed for it."""
    pairs = exceeded = 0
    for model, rates in actual.rates_per_second.items():
        planned = placed_per_second.rates_per_second.get(model, (0.0,) * len(rates))
        pairs += len(rates)
        exceeded += sum(a > p * (1 + 1e-9) for a, p in zip(rates, planned))
    return exceeded / pairs if pairs else 0.0
