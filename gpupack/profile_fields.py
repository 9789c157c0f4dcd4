"""The fields of a profile's rows, and how each is read: a model's peaks and details, a measured
point, and the checks every row shares (a mapping, no unknown field, each value through its parser).

They live apart from :mod:`gpupack.profiles`, which reads a whole profile file, so that the parts
of a profile read elsewhere (groups measured together, :mod:`gpupack.profile_colocations`) use the
same parsers and the same file:line:field errors without importing the profile reader back.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from gpupack.domain import ModelFootprint, Resource
from gpupack.errors import InputError
from gpupack.model_configs import POINT_RESOURCES, ConfigPoint
from gpupack.units import UnitError, parse_bytes_field, parse_count, parse_duration, parse_ratio
from gpupack.yamlfile import LineDict

PEAK_FIELDS = {r.profile_field: r for r in Resource}
DETAIL_FIELDS: dict[str, Callable[[Any], Any]] = {
    "version": str,
    "batch_size": parse_count,
    "concurrency": parse_count,
    "throughput_per_second": lambda v: _non_negative(float(v)),
    "latency_p99_seconds": parse_duration,
}
FIELD_ORDER = ("model", *DETAIL_FIELDS, *PEAK_FIELDS)
_POINT_FIELDS: dict[str, Callable[[Any], Any]] = {
    "concurrency": parse_count,
    "request_rate_per_second": lambda v: _non_negative(float(v)),
    "throughput_per_second": lambda v: _non_negative(float(v)),
    "latency_p50_seconds": parse_duration,
    "latency_p99_seconds": parse_duration,
    **{r.profile_field: parse_ratio for r in POINT_RESOURCES},
}
_BREAKDOWN = "latency_breakdown_seconds"


def point(row: LineDict, path: str, where: str) -> ConfigPoint:
    reject_unknown(row, set(_POINT_FIELDS) | {_BREAKDOWN}, path, where + ".")
    values = fields(row, _POINT_FIELDS, path, where, required=("throughput_per_second",))
    peaks = {r: values.pop(r.profile_field) for r in POINT_RESOURCES if r.profile_field in values}
    breakdown = {}
    if row.get(_BREAKDOWN) is not None:
        raw = mapping(row[_BREAKDOWN], path, row.line_of(_BREAKDOWN), f"{where}.{_BREAKDOWN}")
        breakdown = {str(k): float(_parse(parse_duration, v, path, raw.line_of(k), f"{where}.{_BREAKDOWN}.{k}"))
                     for k, v in raw.items()}
    return ConfigPoint(peaks=peaks, latency_breakdown_seconds=breakdown, **values)


def fields(row: LineDict, parsers: Mapping[str, Callable[[Any], Any]], path: str, where: str,
           required: tuple[str, ...]) -> dict[str, Any]:
    for key in required:
        if row.get(key) is None:
            raise InputError("missing", path=path, line=row.line, field=f"{where}.{key}")
    return {key: _parse(parse, row[key], path, row.line_of(key), f"{where}.{key}")
            for key, parse in parsers.items() if row.get(key) is not None}


def footprint(row: LineDict, name: str, path: str, where: str, require_model: bool) -> ModelFootprint:
    known = set(FIELD_ORDER) | ({"points", "configs", "rejected"} if require_model else set())
    reject_unknown(row, known if require_model else known - {"model"}, path, where + ".")
    if Resource.GPU_MEMORY.profile_field not in row:
        raise InputError("missing", path=path, line=row.line, field=f"{where}.{Resource.GPU_MEMORY.profile_field}")
    details = {}
    for key, parse in DETAIL_FIELDS.items():
        if row.get(key) is not None:
            details[key] = _parse(parse, row[key], path, row.line_of(key), f"{where}.{key}")
    return ModelFootprint(model=name, peaks=peaks(row, path, where), **details)


def peaks(row: LineDict, path: str, where: str,
          ratio: Callable[[Any], float] = parse_ratio) -> dict[Resource, float]:
    found = {}
    for key, resource in PEAK_FIELDS.items():
        if row.get(key) is not None:
            parse = parse_bytes_field if resource.is_bytes else ratio
            found[resource] = float(_parse(parse, row[key], path, row.line_of(key), f"{where}.{key}"))
    return found


def peak_fields(peaks: Mapping[Resource, float]) -> dict[str, float | int]:
    return {r.profile_field: int(v) if r.is_bytes else v for r, v in peaks.items()}


def _parse(parse: Callable[[Any], Any], value: Any, path: str, line: int, field_name: str) -> Any:
    try:
        return parse(value)
    except (UnitError, ValueError, TypeError) as e:
        raise InputError(str(e), path=path, line=line, field=field_name) from e


def mapping(value: Any, path: str, line: int, where: str) -> LineDict:
    if not isinstance(value, LineDict):
        raise InputError("must be a mapping", path=path, line=line, field=where)
    return value


def reject_unknown(row: LineDict, known: set[str], path: str, prefix: str) -> None:
    for key in row:
        if key not in known:
            raise InputError(f"unknown field (known: {', '.join(sorted(known))})", path=path,
                             line=row.line_of(key), field=f"{prefix}{key}")


def sum_of_ratios(value: Any) -> float:
    """A sum of peaks measured apart, which can pass 100% where the device measured together cannot."""
    text = str(value).strip()
    return _non_negative(float(text.removesuffix("%")) / 100 if text.endswith("%") else float(text))


def _non_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"{value!r} is negative")
    return value


def non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value
