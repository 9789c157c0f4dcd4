"""Demand files: how much traffic each model must serve, and how slow its answers may be.

```yaml
demand:
  - {model: segmentation_ct_liver, rate_per_second: 40, latency_p99_seconds: 0.050}
```

``latency_p99_seconds`` may be left out: then any measured point may be used, however slow. Rates
are inferences per second (as Triton's ``nv_inference_count`` counts them) and may carry a unit as
flags do ("20/s", "1200/m"); 0 is a model loaded once, idle. Durations may carry units ("50ms").
Every error names file:line:field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from gpupack.errors import InputError
from gpupack.units import UnitError, parse_duration, parse_rate
from gpupack.yamlfile import LineDict, LineList, load_yaml_file

_FIELDS = ("model", "rate_per_second", "latency_p99_seconds")


@dataclass(frozen=True)
class ModelDemand:
    model: str
    rate_per_second: float
    latency_p99_seconds: float | None = None  # the budget; None: no budget


def load_demand(path: str | Path) -> tuple[ModelDemand, ...]:
    return parse_demand(load_yaml_file(path), str(path))


def parse_demand(document: Any, path: str) -> tuple[ModelDemand, ...]:
    if not isinstance(document, LineDict) or "demand" not in document:
        raise InputError("top level must be a mapping with a 'demand' list", path=path, line=1)
    for key in document:
        if key != "demand":
            raise InputError("unknown field (known: demand)", path=path, line=document.line_of(key), field=key)
    rows = document["demand"]
    if not isinstance(rows, LineList):
        raise InputError("must be a list of {model, rate_per_second, latency_p99_seconds}", path=path,
                         line=document.line_of("demand"), field="demand")
    demands, seen = [], set()
    for index, row in enumerate(rows):
        where = f"demand[{index}]"
        if not isinstance(row, LineDict):
            raise InputError("must be a mapping", path=path, line=rows.item_lines[index], field=where)
        demand = _row(row, path, where)
        if demand.model in seen:
            raise InputError(f"model {demand.model!r} appears twice", path=path, line=row.line_of("model"),
                             field=f"{where}.model")
        seen.add(demand.model)
        demands.append(demand)
    return tuple(demands)


def _row(row: LineDict, path: str, where: str) -> ModelDemand:
    for key in row:
        if key not in _FIELDS:
            raise InputError(f"unknown field (known: {', '.join(_FIELDS)})", path=path, line=row.line_of(key),
                             field=f"{where}.{key}")
    for key in ("model", "rate_per_second"):
        if row.get(key) is None:
            raise InputError("missing", path=path, line=row.line, field=f"{where}.{key}")
    model = str(row["model"]).strip()
    if not model:
        raise InputError("must not be empty", path=path, line=row.line_of("model"), field=f"{where}.model")
    try:
        rate = parse_rate_field(row["rate_per_second"])
    except UnitError as e:
        raise InputError(str(e), path=path,
                         line=row.line_of("rate_per_second"), field=f"{where}.rate_per_second") from e
    budget = None
    if row.get("latency_p99_seconds") is not None:
        try:
            budget = parse_duration(row["latency_p99_seconds"])
        except UnitError as e:
            raise InputError(str(e), path=path, line=row.line_of("latency_p99_seconds"),
                             field=f"{where}.latency_p99_seconds") from e
        if budget <= 0:
            raise InputError("must be above 0", path=path, line=row.line_of("latency_p99_seconds"),
                             field=f"{where}.latency_p99_seconds")
    return ModelDemand(model, rate, budget)


def parse_rate_field(value: Any) -> float:
    """A rate as demand files write it: as flags read rates, and 0 for a model loaded once, idle."""
    if type(value) is float or type(value) is int:
        if 0 < value < math.inf:
            return float(value)  # what parse_rate makes of a number, without its text: a series has 170,000
        if value == 0:
            return 0.0  # idle: parse_rate, as flags read rates, asks for more than nothing
    return parse_rate(value)


def scaled(demands: Iterable[ModelDemand], factor: float) -> tuple[ModelDemand, ...]:
    """The same demand times ``factor`` (headroom, or a what-if)."""
    return tuple(ModelDemand(d.model, d.rate_per_second * factor, d.latency_p99_seconds) for d in demands)
