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
from gpupack.model_configs import ModelConfig, config_document, single_point_config
from gpupack.profile_colocations import Colocation, colocation_document, colocations
from gpupack.profile_fields import (
    DETAIL_FIELDS, FIELD_ORDER, PEAK_FIELDS, boolean, fields, footprint, mapping, non_empty, peak_fields, peaks, point,
    reject_unknown,
)
from gpupack.units import parse_bytes_field, parse_count, parse_duration
from gpupack.yamlfile import LineDict, LineList, collection_paused, load_yaml_text, read_text_file

BASELINE = "server_baseline"
_CONFIG_FIELDS: dict[str, Callable[[Any], Any]] = {
    "name": lambda v: non_empty(str(v)),
    "instance_count": parse_count,
    "max_batch_size": parse_count,
    "dynamic_batching": lambda v: boolean(v),
    "max_queue_delay_seconds": parse_duration,
    "peak_gpu_memory_bytes": parse_bytes_field,
}
_REJECTED_FIELDS = ("name", "reason")


@dataclass(frozen=True)
class RejectedConfig:
    """A configuration the profiler measured and set aside, and why."""

    name: str
    reason: str


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
        BASELINE: peak_fields(profile.server_baseline),
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
        document["colocations"] = [colocation_document(c) for c in profile.colocations]
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    else:
        path.write_text("".join(f"# {note}\n" for note in notes) + yaml.safe_dump(document, sort_keys=False),
                        encoding="utf-8")


def _rejected_document(profile: Profile, model: str) -> dict[str, Any]:
    rejected = profile.rejected.get(model, ())
    return {"rejected": [{"name": r.name, "reason": r.reason} for r in rejected]} if rejected else {}


def _row(model: ModelFootprint, with_model: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model.model} if with_model else {}
    for name in DETAIL_FIELDS:
        if getattr(model, name) is not None:
            row[name] = getattr(model, name)
    row.update(peak_fields(model.peaks))
    return row


def _from_document(document: Any, path: str) -> Profile:
    if not isinstance(document, LineDict):
        raise InputError(f"top level must be a mapping with '{BASELINE}' and 'models'", path=path, line=1)
    reject_unknown(document, {BASELINE, "models", "colocations"}, path, "")
    for key in (BASELINE, "models"):
        if key not in document:
            raise InputError("missing", path=path, line=document.line, field=key)
    baseline = mapping(document[BASELINE], path, document.line_of(BASELINE), BASELINE)
    reject_unknown(baseline, set(PEAK_FIELDS), path, BASELINE + ".")
    rows = document["models"]
    if not isinstance(rows, LineList):
        raise InputError("must be a list of models", path=path, line=document.line_of("models"), field="models")
    models, points, configs, rejected, seen = [], {}, {}, {}, set()
    for index, row in enumerate(rows):
        where = f"models[{index}]"
        row = mapping(row, path, rows.item_lines[index], where)
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
        model = footprint(row, name, path, where, require_model=True)
        models.append(model)
        raw_points = row.get("points") or LineList()
        if not isinstance(raw_points, LineList):
            raise InputError("must be a list of measured points", path=path, line=row.line_of("points"), field=f"{where}.points")
        points[model.model] = tuple(
            footprint(mapping(p, path, raw_points.item_lines[k], f"{where}.points[{k}]"), model.model, path,
                      f"{where}.points[{k}]", require_model=False)
            for k, p in enumerate(raw_points)
        )
        if "configs" in row:
            configs[model.model] = _configs(row["configs"], path, row.line_of("configs"), f"{where}.configs")
    groups = colocations(document["colocations"], path, document.line_of("colocations")) \
        if "colocations" in document else ()
    return Profile(peaks(baseline, path, BASELINE), tuple(models), {m: p for m, p in points.items() if p}, configs,
                   rejected, groups)


def _unplaceable(row: LineDict, path: str, where: str) -> None:
    """A model with ``configs: []``: measured, nothing within its constraints; it must say why."""
    reject_unknown(row, {"model", "configs", "rejected"}, path, where + ".")
    if "rejected" not in row:
        raise InputError("a model with no configuration must list its rejected configurations and why "
                         "(rejected: [{name, reason}])", path=path, line=row.line_of("configs"), field=f"{where}.configs")


def _rejected(raw: Any, path: str, line: int, where: str) -> tuple[RejectedConfig, ...]:
    if not isinstance(raw, LineList) or not raw:
        raise InputError("must be a non-empty list of {name, reason}", path=path, line=line, field=where)
    found = []
    for index, item in enumerate(raw):
        at = f"{where}[{index}]"
        row = mapping(item, path, raw.item_lines[index], at)
        reject_unknown(row, set(_REJECTED_FIELDS), path, at + ".")
        values = fields(row, {"name": lambda v: non_empty(str(v)), "reason": lambda v: non_empty(str(v))},
                        path, at, required=_REJECTED_FIELDS)
        found.append(RejectedConfig(**values))
    return tuple(found)


def _configs(raw: Any, path: str, line: int, where: str) -> tuple[ModelConfig, ...]:
    if not isinstance(raw, LineList) or not raw:
        raise InputError("must be a non-empty list of configurations", path=path, line=line, field=where)
    configs, names = [], set()
    for index, item in enumerate(raw):
        at = f"{where}[{index}]"
        row = mapping(item, path, raw.item_lines[index], at)
        reject_unknown(row, set(_CONFIG_FIELDS) | {"points"}, path, at + ".")
        values = fields(row, _CONFIG_FIELDS, path, at, required=("name", "peak_gpu_memory_bytes", "points"))
        if values["name"] in names:
            raise InputError(f"configuration {values['name']!r} appears twice", path=path, line=row.line_of("name"),
                             field=f"{at}.name")
        names.add(values["name"])
        raw_points = row["points"]
        if not isinstance(raw_points, LineList) or not raw_points:
            raise InputError("must be a non-empty list of measured points", path=path, line=row.line_of("points"),
                             field=f"{at}.points")
        points = [point(mapping(p, path, raw_points.item_lines[k], f"{at}.points[{k}]"), path, f"{at}.points[{k}]")
                  for k, p in enumerate(raw_points)]
        values["peak_gpu_memory_bytes"] = float(values["peak_gpu_memory_bytes"])
        configs.append(ModelConfig(points=tuple(sorted(points, key=lambda p: p.throughput_per_second or 0.0)), **values))
    return tuple(configs)


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
    writer = csv.DictWriter(out, fieldnames=list(FIELD_ORDER), lineterminator="\n")
    writer.writeheader()
    writer.writerow({"model": BASELINE, **peak_fields(profile.server_baseline)})
    for model in profile.models:
        writer.writerow(_row(model))
    return out.getvalue()
