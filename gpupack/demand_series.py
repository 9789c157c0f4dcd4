"""Demand series files: how much traffic each model must serve at every step of a period (a day, a
week), so that plans can follow traffic's shape instead of adding up every model's peak.

```yaml
step: 1h                      # the length of one step
latency_p99_seconds: {default: 0.1, segmentation_ct_liver: 0.05}
series:                       # one rate per step, the same number of steps for every model
  segmentation_ct_liver: [40, 42, 38]
```

Rates read as in demand files ("20/s", "1200/m", 0 for idle); durations may carry units ("50ms").
``latency_p99_seconds`` may be left out, or give only some models (then the others have no budget).
Every error names file:line:field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gpupack.demand import ModelDemand, parse_rate_field
from gpupack.errors import InputError
from gpupack.units import UnitError, parse_duration
from gpupack.yamlfile import LineDict, LineList, load_yaml_file

_FIELDS = ("step", "latency_p99_seconds", "series")
DEFAULT = "default"


@dataclass(frozen=True)
class DemandSeries:
    step_seconds: float
    rates_per_second: Mapping[str, tuple[float, ...]]  # model -> one rate per step
    latency_p99_seconds: Mapping[str, float]  # model -> budget; models absent have none

    @property
    def steps(self) -> int:
        return len(next(iter(self.rates_per_second.values()), ()))

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.rates_per_second)

    def at(self, step: int) -> tuple[ModelDemand, ...]:
        """Every model's demand in one step, as a demand file would give it."""
        return tuple(ModelDemand(m, r[step], self.latency_p99_seconds.get(m)) for m, r in self.rates_per_second.items())

    def scaled(self, factor: float) -> "DemandSeries":
        """Every rate times ``factor`` (headroom, or a what-if)."""
        return DemandSeries(self.step_seconds, {m: tuple(r * factor for r in rs) for m, rs in self.rates_per_second.items()},
                            self.latency_p99_seconds)

    def peaks(self) -> tuple[ModelDemand, ...]:
        """Every model at its own peak: what a plan by the sum of the peaks serves."""
        return tuple(ModelDemand(m, max(r), self.latency_p99_seconds.get(m)) for m, r in self.rates_per_second.items())


def load_demand_series(path: str | Path) -> DemandSeries:
    return parse_demand_series(load_yaml_file(path), str(path))


def parse_demand_series(document: Any, path: str) -> DemandSeries:
    if not isinstance(document, LineDict) or "series" not in document:
        raise InputError("top level must be a mapping with 'step' and a 'series' of rates per model", path=path, line=1)
    for key in document:
        if key not in _FIELDS:
            raise InputError(f"unknown field (known: {', '.join(_FIELDS)})", path=path, line=document.line_of(key),
                             field=key)
    step = _step(document, path)
    series = document["series"]
    if not isinstance(series, LineDict) or not series:
        raise InputError("must map each model to its list of rates, one per step", path=path,
                         line=document.line_of("series"), field="series")
    rates: dict[str, tuple[float, ...]] = {}
    first: tuple[str, int] | None = None
    for model, values in series.items():
        where, line = f"series.{model}", series.line_of(model)
        if not isinstance(values, LineList) or not values:
            raise InputError("must be a list of rates, one per step", path=path, line=line, field=where)
        parsed = []
        for k, value in enumerate(values):
            try:
                parsed.append(parse_rate_field(value))
            except UnitError as e:
                raise InputError(str(e), path=path, line=values.item_lines[k], field=f"{where}[{k}]") from e
        if first is None:
            first = (str(model), len(parsed))
        elif len(parsed) != first[1]:
            raise InputError(f"has {len(parsed)} steps but series.{first[0]} has {first[1]}: every model needs "
                             "one rate per step", path=path, line=line, field=where)
        rates[str(model)] = tuple(parsed)
    return DemandSeries(step, rates, _budgets(document, path, rates))


def _step(document: LineDict, path: str) -> float:
    if document.get("step") is None:
        raise InputError("missing: the length of one step, like 1h", path=path, line=1, field="step")
    try:
        step = parse_duration(document["step"])
    except UnitError as e:
        raise InputError(str(e), path=path, line=document.line_of("step"), field="step") from e
    if step <= 0:
        raise InputError("must be above 0", path=path, line=document.line_of("step"), field="step")
    return step


def _budgets(document: LineDict, path: str, rates: Mapping[str, tuple[float, ...]]) -> dict[str, float]:
    given = document.get("latency_p99_seconds")
    if given is None:
        return {}
    if not isinstance(given, LineDict):
        raise InputError("must map 'default' and models to a p99 budget, like {default: 100ms}", path=path,
                         line=document.line_of("latency_p99_seconds"), field="latency_p99_seconds")
    budgets: dict[str, float] = {}
    for key, value in given.items():
        field = f"latency_p99_seconds.{key}"
        if key != DEFAULT and key not in rates:
            raise InputError("model not in series (or write 'default')", path=path, line=given.line_of(key), field=field)
        try:
            budget = parse_duration(value)
        except UnitError as e:
            raise InputError(str(e), path=path, line=given.line_of(key), field=field) from e
        if budget <= 0:
            raise InputError("must be above 0", path=path, line=given.line_of(key), field=field)
        budgets[str(key)] = budget
    default = budgets.pop(DEFAULT, None)
    if default is not None:
        budgets = {m: budgets.get(m, default) for m in rates}
    return budgets
