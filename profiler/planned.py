"""A plan file (``gpupack plan --format json``) read as the devices to replay.

A demand plan lists each device's ``copies`` with their configuration and the rate each is sent;
a plain plan lists each device's ``models``, which are then replayed at the rate the profile
measured each at (``throughput_per_second``). A demand file adds each model's p99 budget. The
plan's ``totals`` are the device's predicted peaks. Every error names file, line and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from gpupack.demand import ModelDemand
from gpupack.errors import InputError
from gpupack.profiles import Profile
from gpupack.units import UnitError, parse_rate
from gpupack.verification import PlannedCopy, PlannedDevice
from gpupack.yamlfile import LineDict, LineList, load_yaml_file


def load_planned_devices(path: str | Path, profile: Profile | None = None,
                         demand: Sequence[ModelDemand] = (), *, unrated: bool = False) -> tuple[PlannedDevice, ...]:
    """The plan's devices with each copy's rate and budget. ``unrated``: a plain plan's models are
    read with no rate (0), for a caller that drives them at a load of its own
    (``profile --colocate-from-plan``); otherwise the profile's throughput is each one's rate."""
    where = str(path)
    document = load_yaml_file(path)
    if not isinstance(document, LineDict) or not isinstance(document.get("devices"), LineList):
        raise InputError("must be a plan, with a 'devices' list (gpupack plan --format json writes one)",
                         path=where, line=1, field="devices")
    budgets = {d.model: d.latency_p99_seconds for d in demand}
    rows = document["devices"]
    devices = [_device(row, rows.item_lines[i], f"devices[{i}]", where, profile, budgets, unrated)
               for i, row in enumerate(rows)]
    if not devices:
        raise InputError("the plan has no device", path=where, line=document.line_of("devices"), field="devices")
    return tuple(devices)


def _device(row: Any, line: int, at: str, path: str, profile: Profile | None,
            budgets: dict[str, float | None], unrated: bool) -> PlannedDevice:
    if not isinstance(row, LineDict):
        raise InputError("must be a mapping", path=path, line=line, field=at)
    name = str(row.get("name") or "").strip()
    if not name:
        raise InputError("missing", path=path, line=row.line, field=f"{at}.name")
    if isinstance(row.get("copies"), LineList):
        copies = [_copy(item, row["copies"].item_lines[k], f"{at}.copies[{k}]", path, budgets)
                  for k, item in enumerate(row["copies"])]
    elif isinstance(row.get("models"), LineList) and unrated:
        copies = [PlannedCopy(str(model), None, 0.0, budgets.get(str(model))) for model in row["models"]]
    elif isinstance(row.get("models"), LineList):
        copies = [_at_profiled_rate(str(model), row.line_of("models"), f"{at}.models[{k}]", path, profile, budgets)
                  for k, model in enumerate(row["models"])]
    else:
        raise InputError("a device lists 'copies' (a demand plan) or 'models' (a plain plan)", path=path,
                         line=row.line, field=at)
    totals = row.get("totals") or {}
    if not isinstance(totals, dict):
        raise InputError("must be a mapping of resource totals", path=path, line=row.line_of("totals"),
                         field=f"{at}.totals")
    predicted = {str(k): float(v) for k, v in totals.items() if isinstance(v, (int, float))}
    return PlannedDevice(name, tuple(copies), predicted)


def _copy(item: Any, line: int, at: str, path: str, budgets: dict[str, float | None]) -> PlannedCopy:
    if not isinstance(item, LineDict):
        raise InputError("must be a mapping of model, config and rate_per_second", path=path, line=line, field=at)
    for key in ("model", "rate_per_second"):
        if item.get(key) is None:
            raise InputError("missing", path=path, line=item.line, field=f"{at}.{key}")
    model = str(item["model"])
    try:
        rate = float(item["rate_per_second"]) if item["rate_per_second"] == 0 else parse_rate(item["rate_per_second"])
    except (UnitError, ValueError) as e:
        raise InputError(str(e), path=path, line=item.line_of("rate_per_second"), field=f"{at}.rate_per_second") from e
    config = item.get("config")
    return PlannedCopy(model, None if config is None else str(config), rate, budgets.get(model))


def _at_profiled_rate(model: str, line: int, at: str, path: str, profile: Profile | None,
                      budgets: dict[str, float | None]) -> PlannedCopy:
    if profile is None:
        raise InputError(f"a plain plan's models carry no rate: give --profile, whose throughput for {model} "
                         "is the rate it is replayed at", path=path, line=line, field=at)
    footprint = next((m for m in profile.models if m.model == model), None)
    if footprint is None or not footprint.throughput_per_second:
        raise InputError(f"the profile has no throughput for {model} to replay it at", path=path, line=line, field=at)
    return PlannedCopy(model, None, footprint.throughput_per_second, budgets.get(model))
