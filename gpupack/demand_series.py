"""Demand series files: how much traffic each model must serve at every step of a period (a day, a
week), so that plans can follow traffic's shape instead of adding up every model's peak.

```yaml
step: 1h                      # the length of one step
start: 2026-12-07T00:00:00Z   # optional: when step 0 begins (RFC 3339, with a zone)
latency_p99_seconds: {default: 0.1, segmentation_ct_liver: 0.05}
series:                       # one rate per step, the same number of steps for every model
  segmentation_ct_liver: [40, 42, 38]
```

Rates read as in demand files ("20/s", "1200/m", 0 for idle); durations may carry units ("50ms").
``latency_p99_seconds`` may be left out, or give only some models (then the others have no budget).
``start`` anchors the steps in time, so that a schedule planned from the series can be followed
(``gpupack rules run --schedule``); without it the steps are a shape, not a date.
Every error names file:line:field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from gpupack.demand import ModelDemand, parse_rate_field
from gpupack.errors import InputError
from gpupack.units import UnitError, parse_duration
from gpupack.yamlfile import LineDict, LineList, collection_paused, load_yaml_file

_FIELDS = ("step", "start", "latency_p99_seconds", "series")
DEFAULT = "default"


@dataclass(frozen=True)
class DemandSeries:
    step_seconds: float
    rates_per_second: Mapping[str, tuple[float, ...]]  # model -> one rate per step
    latency_p99_seconds: Mapping[str, float]  # model -> budget; models absent have none
    start_seconds: float | None = None  # when step 0 begins (epoch seconds); None: not anchored in time

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
        rates = {m: tuple(r * factor for r in rs) for m, rs in self.rates_per_second.items()}
        return DemandSeries(self.step_seconds, rates, self.latency_p99_seconds, self.start_seconds)

    def peaks(self) -> tuple[ModelDemand, ...]:
        """Every model at its own peak: what a plan by the sum of the peaks serves."""
        return tuple(ModelDemand(m, max(r), self.latency_p99_seconds.get(m)) for m, r in self.rates_per_second.items())


def load_demand_series(path: str | Path) -> DemandSeries:
    with collection_paused():  # a week of 1,000 models is 170,000 numbers: see collection_paused
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
        try:
            parsed = [parse_rate_field(value) for value in values]
        except UnitError:
            parsed = [_rate(value, path, values.item_lines[k], f"{where}[{k}]") for k, value in enumerate(values)]
        if first is None:
            first = (str(model), len(parsed))
        elif len(parsed) != first[1]:
            raise InputError(f"has {len(parsed)} steps but series.{first[0]} has {first[1]}: every model needs "
                             "one rate per step", path=path, line=line, field=where)
        rates[str(model)] = tuple(parsed)
    start = None
    if document.get("start") is not None:
        try:
            start = parse_timestamp(document["start"])
        except ValueError as e:
            raise InputError(str(e), path=path, line=document.line_of("start"), field="start") from e
    return DemandSeries(step, rates, _budgets(document, path, rates), start)


def _rate(value: Any, path: str, line: int, field: str) -> float:
    try:
        return parse_rate_field(value)
    except UnitError as e:
        raise InputError(str(e), path=path, line=line, field=field) from e


def parse_timestamp(value: Any) -> float:
    """An RFC 3339 timestamp with its zone (``2026-12-07T00:00:00Z``) -> epoch seconds. YAML reads
    an unquoted one as a datetime already; a time without a zone is refused, as it names no moment."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date) or not isinstance(value, str):
        raise ValueError(f"{value!r} is not a timestamp with a zone, like 2026-12-07T00:00:00Z")
    else:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not an RFC 3339 timestamp, like 2026-12-07T00:00:00Z") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{value!s} has no zone: write it in UTC (2026-12-07T00:00:00Z) or with an offset "
                         "(+01:00)")
    return moment.timestamp()


def format_timestamp(seconds: float) -> str:
    """Epoch seconds -> RFC 3339 in UTC (``2026-12-07T00:00:00Z``), as written in schedules."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


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
