"""Profile files: what each model needs at its peak, as measured by the profiler or typed by hand.

A profile is YAML or JSON (``server_baseline`` plus a ``models`` list) or CSV (one row per model,
and a row whose ``model`` is ``server_baseline``). Sizes and ratios may carry units ("309MB",
"80%"); inside gpupack they are bytes and ratios 0-1. Model peaks exclude the server baseline,
which every device pays once. Every error names file:line:field.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import yaml

from gpupack.domain import ModelFootprint, Resource
from gpupack.errors import InputError
from gpupack.units import UnitError, parse_bytes, parse_count, parse_duration, parse_ratio
from gpupack.yamlfile import LineDict, LineList, load_yaml_text

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


@dataclass(frozen=True)
class Profile:
    server_baseline: Mapping[Resource, float]
    models: tuple[ModelFootprint, ...]
    points: Mapping[str, tuple[ModelFootprint, ...]] = field(default_factory=dict)  # model -> every measured point

    def __post_init__(self) -> None:
        object.__setattr__(self, "server_baseline", MappingProxyType(dict(self.server_baseline)))
        object.__setattr__(self, "points", MappingProxyType(dict(self.points)))


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise InputError("file not found", path=str(path)) from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read: {e}", path=str(path)) from e
    if path.suffix.lower() == ".csv":
        return _from_csv(text, str(path))
    return _from_document(load_yaml_text(text, str(path)), str(path))


def write_profile(profile: Profile, path: str | Path) -> None:
    """Write in base units (bytes, ratios, seconds), in the format the suffix names."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        path.write_text(_to_csv(profile), encoding="utf-8")
        return
    document = {
        BASELINE: _peak_fields(profile.server_baseline),
        "models": [
            dict(_row(m), **({"points": [_row(p, with_model=False) for p in profile.points[m.model]]}
                             if profile.points.get(m.model) else {}))
            for m in profile.models
        ],
    }
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


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
    _reject_unknown(document, {BASELINE, "models"}, path, "")
    for key in (BASELINE, "models"):
        if key not in document:
            raise InputError("missing", path=path, line=document.line, field=key)
    baseline = _mapping(document[BASELINE], path, document.line_of(BASELINE), BASELINE)
    _reject_unknown(baseline, set(_PEAK_FIELDS), path, BASELINE + ".")
    rows = document["models"]
    if not isinstance(rows, LineList):
        raise InputError("must be a list of models", path=path, line=document.line_of("models"), field="models")
    models, points, seen = [], {}, set()
    for index, row in enumerate(rows):
        where = f"models[{index}]"
        row = _mapping(row, path, rows.item_lines[index], where)
        model = _footprint(row, str(row.get("model", "")), path, where, require_model=True)
        if model.model in seen:
            raise InputError(f"model {model.model!r} appears twice", path=path, line=row.line_of("model"), field=f"{where}.model")
        seen.add(model.model)
        models.append(model)
        raw_points = row.get("points") or LineList()
        if not isinstance(raw_points, LineList):
            raise InputError("must be a list of measured points", path=path, line=row.line_of("points"), field=f"{where}.points")
        points[model.model] = tuple(
            _footprint(_mapping(p, path, raw_points.item_lines[k], f"{where}.points[{k}]"), model.model, path,
                       f"{where}.points[{k}]", require_model=False)
            for k, p in enumerate(raw_points)
        )
    return Profile(_peaks(baseline, path, BASELINE), tuple(models), {m: p for m, p in points.items() if p})


def _footprint(row: LineDict, name: str, path: str, where: str, require_model: bool) -> ModelFootprint:
    # "configs" (every configuration a search measured) is tolerated here, not read: one chosen peak per model.
    known = set(_FIELD_ORDER) | ({"points", "configs"} if require_model else set())
    _reject_unknown(row, known if require_model else known - {"model"}, path, where + ".")
    if require_model and not name:
        raise InputError("missing model name", path=path, line=row.line, field=f"{where}.model")
    if Resource.GPU_MEMORY.profile_field not in row:
        raise InputError("missing", path=path, line=row.line, field=f"{where}.{Resource.GPU_MEMORY.profile_field}")
    details = {}
    for key, parse in _DETAIL_FIELDS.items():
        if row.get(key) is not None:
            details[key] = _parse(parse, row[key], path, row.line_of(key), f"{where}.{key}")
    return ModelFootprint(model=name, peaks=_peaks(row, path, where), **details)


def _peaks(row: LineDict, path: str, where: str) -> dict[Resource, float]:
    peaks = {}
    for key, resource in _PEAK_FIELDS.items():
        if row.get(key) is not None:
            parse = parse_bytes if resource.is_bytes else parse_ratio
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


def _non_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"{value!r} is negative")
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
