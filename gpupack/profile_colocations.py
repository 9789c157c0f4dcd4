"""Groups of models measured together on one server (``gpupack profile --colocate``), as a
profile's ``colocations`` hold them: the types, how they are read and how they are written.

A part of the profile file of its own, apart from :mod:`gpupack.profiles` (which reads and writes
the whole file and calls this for its ``colocations``), so that the profile reader stays one job;
the rows are read with the same parsers (:mod:`gpupack.profile_fields`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from gpupack.domain import Resource
from gpupack.errors import InputError
from gpupack.model_configs import ConfigPoint, point_document
from gpupack.profile_fields import PEAK_FIELDS, mapping, peak_fields, peaks, point, reject_unknown, sum_of_ratios
from gpupack.yamlfile import LineDict, LineList


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


def colocations(raw: Any, path: str, line: int) -> tuple[Colocation, ...]:
    """A profile's ``colocations`` list, each group of two or more models with the device's peaks."""
    if not isinstance(raw, LineList):
        raise InputError("must be a list of groups measured together", path=path, line=line, field="colocations")
    found = []
    for index, item in enumerate(raw):
        at = f"colocations[{index}]"
        row = mapping(item, path, raw.item_lines[index], at)
        reject_unknown(row, set(PEAK_FIELDS) | {"sum_of_parts", "models"}, path, at + ".")
        members = row.get("models")
        if not isinstance(members, LineList) or len(members) < 2:
            raise InputError("must list the two or more models measured together", path=path,
                             line=row.line_of("models"), field=f"{at}.models")
        models = [_colocated(mapping(m, path, members.item_lines[k], f"{at}.models[{k}]"), path, f"{at}.models[{k}]")
                  for k, m in enumerate(members)]
        names = [m.model for m in models]
        if len(set(names)) < len(names):
            raise InputError(f"a model appears twice in the group ({', '.join(names)})", path=path,
                             line=row.line_of("models"), field=f"{at}.models")
        parts = {}
        if "sum_of_parts" in row:
            raw_parts = mapping(row["sum_of_parts"], path, row.line_of("sum_of_parts"), f"{at}.sum_of_parts")
            reject_unknown(raw_parts, set(PEAK_FIELDS), path, f"{at}.sum_of_parts.")
            parts = peaks(raw_parts, path, f"{at}.sum_of_parts", ratio=sum_of_ratios)
        found.append(Colocation(tuple(models), peaks(row, path, at), parts))
    return tuple(found)


def _colocated(row: LineDict, path: str, where: str) -> ColocatedModel:
    name = str(row.get("model") or "").strip()
    if not name:
        raise InputError("missing model name", path=path, line=row.line, field=f"{where}.model")
    alone = None
    if row.get("alone") is not None:
        alone = point(mapping(row["alone"], path, row.line_of("alone"), f"{where}.alone"), path, f"{where}.alone")
    together = LineDict({k: v for k, v in row.items() if k not in ("model", "config", "alone")})
    together.line, together.key_lines = row.line, row.key_lines
    config = row.get("config")
    return ColocatedModel(name, point(together, path, where), alone, None if config is None else str(config))


def colocation_document(colocation: Colocation) -> dict[str, Any]:
    """One group as the profile file holds it, in base units, as :func:`colocations` reads it back."""
    return {
        **peak_fields(colocation.peaks),
        **({"sum_of_parts": peak_fields(colocation.sum_of_parts)} if colocation.sum_of_parts else {}),
        "models": [{"model": m.model, **({"config": m.config} if m.config is not None else {}),
                    **point_document(m.together),
                    **({"alone": point_document(m.alone)} if m.alone is not None else {})}
                   for m in colocation.models],
    }
