"""Demand from Triton's own metrics: each model's busiest five minutes over a window.

The demand of a model is the peak over the window of ``sum by (model) (rate(nv_inference_count[5m]))``
(every server and version together: what the fleet must serve), times one plus the headroom. No
latency budget comes from metrics; every measured point may be used.

:func:`demand_series_from_prometheus` asks the same, step by step, for ``plan --demand-series``.
One query serves both readers: ``gpupack plan --demand-from-prometheus`` plans for it, and
:class:`DemandSource` hands it to the rules engine, whose ``throughput`` policies judge the copies
placed against it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from gpupack.demand import ModelDemand
from gpupack.demand_series import DemandSeries
from gpupack.errors import InputError
from gpupack.profiles import Profile, load_profile
from gpupack.rules.peaks import PeaksSnapshot, PeaksUnavailableError
from gpupack.rules.peaks_source import PeaksSource, get_json, prometheus_query

RATE_WINDOW_SECONDS = 300.0
RANGE_QUERY_PATH = "/api/v1/query_range"


def demand_query(window_seconds: float, rate_window_seconds: float = RATE_WINDOW_SECONDS) -> str:
    # A subquery step of a fifth of the rate window cannot step over a busy stretch of that length.
    step = max(1, int(rate_window_seconds / 5))
    return (f"max_over_time(sum by (model) (rate(nv_inference_count[{int(rate_window_seconds)}s]))"
            f"[{int(window_seconds)}s:{step}s])")


def demand_from_prometheus(url: str, window_seconds: float, headroom_ratio: float = 0.0,
                           rate_window_seconds: float = RATE_WINDOW_SECONDS, timeout_seconds: float = 10.0,
                           at_seconds: float | None = None) -> tuple[ModelDemand, ...]:
    """Raises :class:`UnreachableError` when Prometheus does not answer (exit 3 for ``plan``),
    :class:`PeaksUnavailableError` when it refuses the query."""
    query = demand_query(window_seconds, rate_window_seconds)
    at = time.time() if at_seconds is None else at_seconds
    demands = []
    for sample in prometheus_query(url, query, timeout_seconds, at):
        model = sample["metric"].get("model")
        if model:
            demands.append(ModelDemand(model, float(sample["value"][1]) * (1 + headroom_ratio)))
    return tuple(sorted(demands, key=lambda d: d.model))


def demand_series_from_prometheus(url: str, window_seconds: float, step_seconds: float,
                                  rate_window_seconds: float = RATE_WINDOW_SECONDS, timeout_seconds: float = 30.0,
                                  at_seconds: float | None = None) -> DemandSeries:
    """The window before ``at_seconds`` (now) in steps: per model and step, the peak of the same
    request rate within the step, from one range query. A step without samples reads 0 (idle).
    Each sample is the peak of the step that ends at its time, so the series starts one step
    before the first sample."""
    steps = int(window_seconds // step_seconds)
    if steps < 1:
        raise InputError("--window: must hold at least one --step")
    end = time.time() if at_seconds is None else at_seconds
    params = {"query": demand_query(step_seconds, rate_window_seconds), "start": f"{end - (steps - 1) * step_seconds:.3f}",
              "end": f"{end:.3f}", "step": f"{step_seconds:g}"}
    body = get_json("Prometheus", url, RANGE_QUERY_PATH, timeout_seconds, params)
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else body
        raise PeaksUnavailableError(f"Prometheus at {url}: query {params['query']!r} failed: {error}")
    rates: dict[str, list[float]] = {}
    for sample in body["data"]["result"]:
        model = sample["metric"].get("model")
        if model:
            mine = rates.setdefault(model, [0.0] * steps)
            for at, value in sample["values"]:
                k = round((float(at) - (end - (steps - 1) * step_seconds)) / step_seconds)
                if 0 <= k < steps:
                    mine[k] = max(mine[k], float(value))
    return DemandSeries(step_seconds, {m: tuple(rates[m]) for m in sorted(rates)}, {},
                        start_seconds=end - steps * step_seconds)


def copy_capacities(profile: Profile) -> dict[str, float]:
    """What one copy of each profiled model serves: its measured ``throughput_per_second``."""
    return {m.model: m.throughput_per_second for m in profile.models if m.throughput_per_second is not None}


@dataclass(frozen=True)
class ObservedDemand:
    """What throughput policies weigh, read fresh on every call: each model's demand from Prometheus
    (headroom is left to the policies) and what one copy of it serves (a profile's
    ``throughput_per_second``). The rules engine's :class:`DemandSource` and the scheduler's
    inputs both read it, so the violation and the plan that answers it see the same numbers.
    """

    prometheus_url: str
    window_seconds: float
    copy_capacity_per_second: Mapping[str, float]
    rate_window_seconds: float = RATE_WINDOW_SECONDS

    def __call__(self) -> dict[str, float]:
        """Model -> inferences per second; raises as :func:`demand_from_prometheus` does."""
        demands = demand_from_prometheus(self.prometheus_url, self.window_seconds,
                                         rate_window_seconds=self.rate_window_seconds)
        return {d.model: d.rate_per_second for d in demands}


@dataclass(frozen=True)
class DemandSource:
    """A peaks source whose snapshots also carry the observed demand and copy capacities.

    A failed demand query fails the whole snapshot: judging capacity against no demand would read
    as "over-provisioned" and ask to remove copies.
    """

    source: PeaksSource
    demand: ObservedDemand

    def __call__(self) -> PeaksSnapshot:
        snapshot = self.source()
        return replace(snapshot, demand_per_second=self.demand(),
                       copy_capacity_per_second=dict(self.demand.copy_capacity_per_second))


def observed_demand(settings: Mapping[str, Any]) -> ObservedDemand | None:
    """The ``demand_from_prometheus`` setting (with ``demand_window`` and ``profile``), or None."""
    if not settings.get("demand_from_prometheus"):
        return None
    if not settings.get("profile"):
        raise InputError("--demand-from-prometheus needs --profile: what one copy of each model serves")
    return ObservedDemand(settings["demand_from_prometheus"], settings["demand_window"],
                          copy_capacities(load_profile(settings["profile"])))


def with_demand(source: PeaksSource, settings: Mapping[str, Any]) -> PeaksSource:
    """``source``, adding demand and copy capacities when ``demand_from_prometheus`` is set."""
    demand = observed_demand(settings)
    return source if demand is None else DemandSource(source, demand)


def with_loaded_capacities(source: PeaksSource, loaded: Callable[[], Mapping[str, float]]) -> PeaksSource:
    """``source``, with each copy's capacity taken from the configuration the scheduler loaded it
    in: after a reconfigure, the profile's top-level figure would judge the new copies wrongly."""
    def snapshot() -> PeaksSnapshot:
        taken = source()
        return replace(taken, copy_capacity_per_second={**taken.copy_capacity_per_second, **loaded()})
    return snapshot
