"""Profile files: what each model needs at its peak, as measured by the profiler or typed by hand.

A profile is YAML or JSON (``server_baseline`` plus a ``models`` list) or CSV (one row per model,
and a row whose ``model`` is ``server_baseline``). Sizes and ratios may carry units ("309MB",
"80%"); inside gpupack they are bytes and ratios 0-1. Model peaks exclude the server baseline,
which every device pays once. Every error names file:line:field.

A model may also carry ``configs``: every configuration the profiler's search measured, each with
its memory peak and its points by throughput (``gpupack.model_configs``). A model without them is
one configuration whose single point is its peak; ``Profile.configs_of`` gives either the same way.

A profile keeps every model it measured. Configurations set aside (over the latency budget, out
of memory, failed requests) are listed under ``rejected`` with the reason; a model none of whose
configurations is within its constraints is written with ``configs: []`` and its ``rejected``
list only, so a planner names it instead of leaving it out::

    - model: segmentation_ct_liver
      configs: []
      rejected:
        - {name: i1-b1, reason: p99 72 ms is over the 50 ms budget}

A profile may also carry ``colocations``: groups of models measured together on one server
(``gpupack profile --colocate``), each model at its load with its throughput, latencies and
Triton's breakdown next to the same model measured alone, and the device's peaks against the sum
of the parts. Utilisation is not additive and latency even less so: a group measured to break a
budget is one the planner must not build again::

    colocations:
      - peak_gpu_memory_bytes: 138MB          # the device, the group driven, the server included
        peak_gpu_utilization_ratio: 100%
        sum_of_parts: {peak_gpu_memory_bytes: 140MB, peak_gpu_utilization_ratio: 84%}
        models:
          - {model: heavy-a, request_rate_per_second: 8, throughput_per_second: 5.9, latency_p99_seconds: 1.2,
             alone: {request_rate_per_second: 8, throughput_per_second: 8, latency_p99_seconds: 0.06}}
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import yaml

from gpupack.domain import ModelFootprint, Resource
from gpupack.errors import InputError
from gpupack.model_configs import (
    POINT_RESOURCES, ConfigPoint, ModelConfig, point_document, config_document, single_point_config,
)
from gpupack.units import UnitError, parse_bytes_field, parse_count, parse_duration, parse_ratio
from gpupack.yamlfile import LineDict, LineList, collection_paused, load_yaml_text, read_text_file

BASELINE = "server_baseline"
_PEAK_FIELDS = {r.profile_field: r for r in Resource}
_DETAIL_FIELDS: dict[str, Callable[[Any], Any]] = {
    "version": str,
    "batch_size": parse_count,
    "concurrency": parse_count,
    "throughput_per_second": lambda v: _non_negative(float(v)),
    "latency_p99_seconds": parse_duration,
}
_FIELD_ORDER = ("model", *_DETAIL_FIELDS, *_PEAK_FIELDS)
_CONFIG_FIELDS: dict[str, Callable[[Any], Any]] = {
    "name": lambda v: _non_empty(str(v)),
    "instance_count": parse_count,
    "max_batch_size": parse_count,
    "dynamic_batching": lambda v: _boolean(v),
    "max_queue_delay_seconds": parse_duration,
    "peak_gpu_memory_bytes": parse_bytes_field,
}
_POINT_FIELDS: dict[str, Callable[[Any], Any]] = {
    "concurrency": parse_count,
    "request_rate_per_second": lambda v: _non_negative(float(v)),
    "throughput_per_second": lambda v: _non_negative(float(v)),
    "latency_p50_seconds": parse_duration,
    "latency_p99_seconds": parse_duration,
    **{r.profile_field: parse_ratio for r in POINT_RESOURCES},
}
_BREAKDOWN = "latency_breakdown_seconds"
_REJECTED_FIELDS = ("name", "reason")


@dataclass(frozen=True)
class RejectedConfig:
    """A configuration the profiler measured and set aside, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class ColocatedModel:
    """One model of a group measured together, beside the same model measured alone at the same load."""

    model: str
    together: ConfigPoint  # its load, throughput, p50/p99 and Triton's breakdown with the group driven
    alone: ConfigPoint | None = None  # the same load with the model alone on the server
    config: str | None = None  # the profiled configuration it ran; None: as its repository has it


@dataclass(frozen=True)
class Colocation:
    """A group measured together on one server: each model, and the device's peaks with all driven."""

    models: tuple[ColocatedModel, ...]
    peaks: Mapping[Resource, float]  # measured with the group driven, the server included
    sum_of_parts: Mapping[Resource, float] = field(default_factory=dict)  # the baseline plus each alone

    def __post_init__(self) -> None:
        object.__setattr__(self, "peaks", MappingProxyType(dict(self.peaks)))
        object.__setattr__(self, "sum_of_parts", MappingProxyType(dict(self.sum_of_parts)))

    @property
    def group(self) -> frozenset[str]:
        return frozenset(m.model for m in self.models)


@dataclass(frozen=True)
class Profile:
    server_baseline: Mapping[Resource, float]
    models: tuple[ModelFootprint, ...]
    points: Mapping[str, tuple[ModelFootprint, ...]] = field(default_factory=dict)  # model -> every measured point
    configs: Mapping[str, tuple[ModelConfig, ...]] = field(default_factory=dict)  # model -> searched configurations
    rejected: Mapping[str, tuple[RejectedConfig, ...]] = field(default_factory=dict)  # model -> set aside, and why
    colocations: tuple[Colocation, ...] = ()  # groups measured together (profile --colocate)

    def __post_init__(self) -> None:
        object.__setattr__(self, "server_baseline", MappingProxyType(dict(self.server_baseline)))
        object.__setattr__(self, "points", MappingProxyType(dict(self.points)))
        object.__setattr__(self, "configs", MappingProxyType(dict(self.configs)))
        object.__setattr__(self, "rejected", MappingProxyType(dict(self.rejected)))

    def configs_of(self, model: ModelFootprint) -> tuple[ModelConfig, ...]:
        """The model's searched configurations, or the one its peak describes."""
        return self.configs.get(model.model) or (single_point_config(model),)

    @property
    def unplaceable(self) -> tuple[str, ...]:
        """Models measured with no configuration within their constraints: in ``rejected`` only."""
        placed = {m.model for m in self.models}
        return tuple(m for m in self.rejected if m not in placed)


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    text = read_text_file(path)
    with collection_paused():  # 1,000 models are 200,000 objects: see collection_paused
        if path.suffix.lower() == ".csv":
            return _from_csv(text, str(path))
        return _from_document(load_yaml_text(text, str(path)), str(path))


def write_profile(profile: Profile, path: str | Path, notes: Sequence[str] = ()) -> None:
    """Write in base units (bytes, ratios, seconds), in the format the suffix names; ``notes``
    (how the numbers were measured) head a YAML file as comments, which readers skip."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        if profile.rejected:
            raise InputError(f"a CSV profile has no place for rejected configurations (models "
                             f"{', '.join(profile.rejected)}): write .yaml or .json", path=str(path))
        if profile.colocations:
            raise InputError("a CSV profile has no place for groups measured together (colocations): "
                             "write .yaml or .json", path=str(path))
        path.write_text(_to_csv(profile), encoding="utf-8")
        return
    document = {
        BASELINE: _peak_fields(profile.server_baseline),
        "models": [
            dict(_row(m), **({"points": [_row(p, with_model=False) for p in profile.points[m.model]]}
                             if profile.points.get(m.model) else {}),
                 **({"configs": [config_document(c) for c in profile.configs[m.model]]}
                    if profile.configs.get(m.model) else {}),
                 **_rejected_document(profile, m.model))
            for m in profile.models
        ] + [{"model": m, "configs": [], **_rejected_document(profile, m)} for m in profile.unplaceable],
    }
    if profile.colocations:
        document["colocations"] = [_colocation_document(c) for c in profile.colocations]
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    else:
        path.write_text("".join(f"# {note}\n" for note in notes) + yaml.safe_dump(document, sort_keys=False),
                        encoding="utf-8")


def _colocation_document(colocation: Colocation) -> dict[str, Any]:
    return {
        **_peak_fields(colocation.peaks),
        **({"sum_of_parts": _peak_fields(colocation.sum_of_parts)} if colocation.sum_of_parts else {}),
        "models": [{"model": m.model, **({"config": m.config} if m.config is not None else {}),
                    **point_document(m.together),
                    **({"alone": point_document(m.alone)} if m.alone is not None else {})}
                   for m in colocation.models],
    }


def _rejected_document(profile: Profile, model: str) -> dict[str, Any]:
    rejected = profile.rejected.get(model, ())
    return {"rejected": [{"name": r.name, "reason": r.reason} for r in rejected]} if rejected else {}


def _row(model: ModelFootprint, with_model: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model.model} if with_model else {}
    for name in _DETAIL_FIELDS:
        if getattr(model, name) is not None:
            row[name] = getattr(model, name)
    row.update(_peak_fields(model.peaks))
    return row


def _peak_fields(peaks: Mapping[Resource, float]) -> dict[str, float | int]:
    return {r.profile_field: int(v) if r.is_bytes else v for r, v in peaks.items()}


def _from_document(document: Any, path: str) -> Profile:
    if not isinstance(document, LineDict):
        raise InputError(f"top level must be a mapping with '{BASELINE}' and 'models'", path=path, line=1)
    _reject_unknown(document, {BASELINE, "models", "colocations"}, path, "")
    for key in (BASELINE, "models"):
        if key not in document:
            raise InputError("missing", path=path, line=document.line, field=key)
    baseline = _mapping(document[BASELINE], path, document.line_of(BASELINE), BASELINE)
    _reject_unknown(baseline, set(_PEAK_FIELDS), path, BASELINE + ".")
    rows = document["models"]
    if not isinstance(rows, LineList):
        raise InputError("must be a list of models", path=path, line=document.line_of("models"), field="models")
    models, points, configs, rejected, seen = [], {}, {}, {}, set()
    for index, row in enumerate(rows):
        where = f"models[{index}]"
        row = _mapping(row, path, rows.item_lines[index], where)
        name = str(row.get("model", ""))
        if not name:
            raise InputError("missing model name", path=path, line=row.line, field=f"{where}.model")
        if name in seen:
            raise InputError(f"model {name!r} appears twice", path=path, line=row.line_of("model"), field=f"{where}.model")
        seen.add(name)
        if "rejected" in row:
            rejected[name] = _rejected(row["rejected"], path, row.line_of("rejected"), f"{where}.rejected")
        if isinstance(row.get("configs"), LineList) and not row["configs"]:
            _unplaceable(row, path, where)
            continue
        model = _footprint(row, name, path, where, require_model=True)
        models.append(model)
        raw_points = row.get("points") or LineList()
        if not isinstance(raw_points, LineList):
            raise InputError("must be a list of measured points", path=path, line=row.line_of("points"), field=f"{where}.points")
        points[model.model] = tuple(
            _footprint(_mapping(p, path, raw_points.item_lines[k], f"{where}.points[{k}]"), model.model, path,
                       f"{where}.points[{k}]", require_model=False)
            for k, p in enumerate(raw_points)
        )
        if "configs" in row:
            configs[model.model] = _configs(row["configs"], path, row.line_of("configs"), f"{where}.configs")
    colocations = _colocations(document["colocations"], path, document.line_of("colocations")) \
        if "colocations" in document else ()
    return Profile(_peaks(baseline, path, BASELINE), tuple(models), {m: p for m, p in points.items() if p}, configs,
                   rejected, colocations)


def _colocations(raw: Any, path: str, line: int) -> tuple[Colocation, ...]:
    if not isinstance(raw, LineList):
        raise InputError("must be a list of groups measured together", path=path, line=line, field="colocations")
    found = []
    for index, item in enumerate(raw):
        at = f"colocations[{index}]"
        row = _mapping(item, path, raw.item_lines[index], at)
        _reject_unknown(row, set(_PEAK_FIELDS) | {"sum_of_parts", "models"}, path, at + ".")
        members = row.get("models")
        if not isinstance(members, LineList) or len(members) < 2:
            raise InputError("must list the two or more models measured together", path=path,
                             line=row.line_of("models"), field=f"{at}.models")
        models = [_colocated(_mapping(m, path, members.item_lines[k], f"{at}.models[{k}]"), path, f"{at}.models[{k}]")
                  for k, m in enumerate(members)]
        names = [m.model for m in models]
        if len(set(names)) < len(names):
            raise InputError(f"a model appears twice in the group ({', '.join(names)})", path=path,
                             line=row.line_of("models"), field=f"{at}.models")
        parts = {}
        if "sum_of_parts" in row:
            raw_parts = _mapping(row["sum_of_parts"], path, row.line_of("sum_of_parts"), f"{at}.sum_of_parts")
            _reject_unknown(raw_parts, set(_PEAK_FIELDS), path, f"{at}.sum_of_parts.")
            parts = _peaks(raw_parts, path, f"{at}.sum_of_parts", ratio=_sum_of_ratios)
        found.append(Colocation(tuple(models), _peaks(row, path, at), parts))
    return tuple(found)


def _colocated(row: LineDict, path: str, where: str) -> ColocatedModel:
    name = str(row.get("model") or "").strip()
    if not name:
        raise InputError("missing model name", path=path, line=row.line, field=f"{where}.model")
    alone = None
    if row.get("alone") is not None:
        alone = _point(_mapping(row["alone"], path, row.line_of("alone"), f"{where}.alone"), path, f"{where}.alone")
    together = LineDict({k: v for k, v in row.items() if k not in ("model", "config", "alone")})
    together.line, together.key_lines = row.line, row.key_lines
    config = row.get("config")
    return ColocatedModel(name, _point(together, path, where), alone, None if config is None else str(config))


def _unplaceable(row: LineDict, path: str, where: str) -> None:
    """A model with ``configs: []``: measured, nothing within its constraints; it must say why."""
    _reject_unknown(row, {"model", "configs", "rejected"}, path, where + ".")
    if "rejected" not in row:
        raise InputError("a model with no configuration must list its rejected configurations and why "
                         "(rejected: [{name, reason}])", path=path, line=row.line_of("configs"), field=f"{where}.configs")


def _rejected(raw: Any, path: str, line: int, where: str) -> tuple[RejectedConfig, ...]:
    if not isinstance(raw, LineList) or not raw:
        raise InputError("must be a non-empty list of {name, reason}", path=path, line=line, field=where)
    found = []
    for index, item in enumerate(raw):
        at = f"{where}[{index}]"
        row = _mapping(item, path, raw.item_lines[index], at)
        _reject_unknown(row, set(_REJECTED_FIELDS), path, at + ".")
        values = _fields(row, {"name": lambda v: _non_empty(str(v)), "reason": lambda v: _non_empty(str(v))},
                         path, at, required=_REJECTED_FIELDS)
        found.append(RejectedConfig(**values))
    return tuple(found)


def _configs(raw: Any, path: str, line: int, where: str) -> tuple[ModelConfig, ...]:
    if not isinstance(raw, LineList) or not raw:
        raise InputError("must be a non-empty list of configurations", path=path, line=line, field=where)
    configs, names = [], set()
    for index, item in enumerate(raw):
        at = f"{where}[{index}]"
        row = _mapping(item, path, raw.item_lines[index], at)
        _reject_unknown(row, set(_CONFIG_FIELDS) | {"points"}, path, at + ".")
        values = _fields(row, _CONFIG_FIELDS, path, at, required=("name", "peak_gpu_memory_bytes", "points"))
        if values["name"] in names:
            raise InputError(f"configuration {values['name']!r} appears twice", path=path, line=row.line_of("name"),
                             field=f"{at}.name")
        names.add(values["name"])
        raw_points = row["points"]
        if not isinstance(raw_points, LineList) or not raw_points:
            raise InputError("must be a non-empty list of measured points", path=path, line=row.line_of("points"),
                             field=f"{at}.points")
        points = [_point(_mapping(p, path, raw_points.item_lines[k], f"{at}.points[{k}]"), path, f"{at}.points[{k}]")
                  for k, p in enumerate(raw_points)]
        values["peak_gpu_memory_bytes"] = float(values["peak_gpu_memory_bytes"])
        configs.append(ModelConfig(points=tuple(sorted(points, key=lambda p: p.throughput_per_second or 0.0)), **values))
    return tuple(configs)


def _point(row: LineDict, path: str, where: str) -> ConfigPoint:
    _reject_unknown(row, set(_POINT_FIELDS) | {_BREAKDOWN}, path, where + ".")
    values = _fields(row, _POINT_FIELDS, path, where, required=("throughput_per_second",))
    peaks = {r: values.pop(r.profile_field) for r in POINT_RESOURCES if r.profile_field in values}
    breakdown = {}
    if row.get(_BREAKDOWN) is not None:
        raw = _mapping(row[_BREAKDOWN], path, row.line_of(_BREAKDOWN), f"{where}.{_BREAKDOWN}")
        breakdown = {str(k): float(_parse(parse_duration, v, path, raw.line_of(k), f"{where}.{_BREAKDOWN}.{k}"))
                     for k, v in raw.items()}
    return ConfigPoint(peaks=peaks, latency_breakdown_seconds=breakdown, **values)


def _fields(row: LineDict, parsers: Mapping[str, Callable[[Any], Any]], path: str, where: str,
            required: tuple[str, ...]) -> dict[str, Any]:
    for key in required:
        if row.get(key) is None:
            raise InputError("missing", path=path, line=row.line, field=f"{where}.{key}")
    return {key: _parse(parse, row[key], path, row.line_of(key), f"{where}.{key}")
            for key, parse in parsers.items() if row.get(key) is not None}


def _footprint(row: LineDict, name: str, path: str, where: str, require_model: bool) -> ModelFootprint:
    known = set(_FIELD_ORDER) | ({"points", "configs", "rejected"} if require_model else set())
    _reject_unknown(row, known if require_model else known - {"model"}, path, where + ".")
    if Resource.GPU_MEMORY.profile_field not in row:
        raise InputError("missing", path=path, line=row.line, field=f"{where}.{Resource.GPU_MEMORY.profile_field}")
    details = {}
    for key, parse in _DETAIL_FIELDS.items():
        if row.get(key) is not None:
            details[key] = _parse(parse, row[key], path, row.line_of(key), f"{where}.{key}")
    return ModelFootprint(model=name, peaks=_peaks(row, path, where), **details)


def _peaks(row: LineDict, path: str, where: str,
           ratio: Callable[[Any], float] = parse_ratio) -> dict[Resource, float]:
    peaks = {}
    for key, resource in _PEAK_FIELDS.items():
        if row.get(key) is not None:
            parse = parse_bytes_field if resource.is_bytes else ratio
            peaks[resource] = float(_parse(parse, row[key], path, row.line_of(key), f"{where}.{key}"))
    return peaks


def _parse(parse: Callable[[Any], Any], value: Any, path: str, line: int, field_name: str) -> Any:
    try:
        return parse(value)
    except (UnitError, ValueError, TypeError) as e:
        raise InputError(str(e), path=path, line=line, field=field_name) from e


def _mapping(value: Any, path: str, line: int, where: str) -> LineDict:
    if not isinstance(value, LineDict):
        raise InputError("must be a mapping", path=path, line=line, field=where)
    return value


def _reject_unknown(row: LineDict, known: set[str], path: str, prefix: str) -> None:
    for key in row:
        if key not in known:
            raise InputError(f"unknown field (known: {', '.join(sorted(known))})", path=path,
                             line=row.line_of(key), field=f"{prefix}{key}")


def _sum_of_ratios(value: Any) -> float:
    """A sum of peaks measured apart, which can pass 100% where the device measured together cannot."""
    text = str(value).strip()
    return _non_negative(float(text.removesuffix("%")) / 100 if text.endswith("%") else float(text))


def _non_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"{value!r} is negative")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _from_csv(text: str, path: str) -> Profile:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "model" not in reader.fieldnames:
        raise InputError("the header must name a 'model' column", path=path, line=1)
    baseline: LineDict | None = None
    rows = LineList()
    rows.item_lines = []
    for row in reader:
        line_dict = LineDict({k: v for k, v in row.items() if v not in (None, "")})
        line_dict.line, line_dict.key_lines = reader.line_num, {}
        if None in line_dict:
            raise InputError("more values than header columns", path=path, line=reader.line_num)
        if line_dict.get("model") == BASELINE:
            del line_dict["model"]
            baseline = line_dict
        else:
            rows.append(line_dict)
            rows.item_lines.append(reader.line_num)
    if baseline is None:
        raise InputError(f"no row with model '{BASELINE}'", path=path, line=1, field=BASELINE)
    document = LineDict({BASELINE: baseline, "models": rows})
    document.line, document.key_lines = 1, {}
    return _from_document(document, path)


def _to_csv(profile: Profile) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(_FIELD_ORDER), lineterminator="\n")
    writer.writeheader()
    writer.writerow({"model": BASELINE, **_peak_fields(profile.server_baseline)})
    for model in profile.models:
        writer.writerow(_row(model))
    return out.getvalue()
