"""Devices files for ``gpupack plan``: the fleet to plan for, when it is not N identical GPUs.

::

    devices:
      - {name: t4, memory: 16GiB, count: 4, cost: 0.35, labels: {class: T4}}
      - {name: a100, memory: 80GiB, cost: 2.9, servers: [triton-a]}

``count`` expands ``t4`` to ``t4-1`` ... ``t4-4``. Utilisation and bandwidth capacities are 100%.
``servers`` names the Triton servers that run on one device, so that policies scoped to servers
(``selector.servers``, ``to: {servers: ...}``) mean in a plan what they mean to the rules engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from gpupack.domain import Device, Resource
from gpupack.errors import InputError
from gpupack.units import UnitError, parse_bytes, parse_count
from gpupack.yamlfile import LineDict, LineList, load_yaml_file

_FIELDS = ("name", "memory", "count", "cost", "labels", "servers")


@dataclass(frozen=True)
class PlannedDevices:
    """The devices to plan for, and the servers each runs (none for devices described by size)."""

    devices: tuple[Device, ...]
    servers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # device name -> its servers


def identical_devices(count: int, memory_bytes: int) -> PlannedDevices:
    return PlannedDevices(tuple(Device(f"gpu-{k}", {Resource.GPU_MEMORY: memory_bytes}) for k in range(1, count + 1)))


def load_devices(path: str | Path) -> PlannedDevices:
    document = load_yaml_file(path)
    path = str(path)
    rows = document.get("devices") if isinstance(document, LineDict) else None
    if not isinstance(rows, LineList) or not rows:
        raise InputError("expected 'devices:' with a list of devices", path=path, line=1, field="devices")
    devices: list[Device] = []
    servers: dict[str, tuple[str, ...]] = {}
    for index, row in enumerate(rows):
        where = f"devices[{index}]"
        if not isinstance(row, LineDict):
            raise InputError("must be a mapping", path=path, line=rows.item_lines[index], field=where)
        for key in row:
            if key not in _FIELDS:
                raise InputError(f"unknown field (known: {', '.join(_FIELDS)})", path=path, line=row.line_of(key), field=f"{where}.{key}")
        for key in ("name", "memory"):
            if key not in row:
                raise InputError("missing", path=path, line=row.line, field=f"{where}.{key}")

        def value(key: str, parse: Callable[[Any], Any], default: Any = None) -> Any:
            if key not in row:
                return default
            try:
                return parse(row[key])
            except (UnitError, ValueError, TypeError) as e:
                raise InputError(str(e), path=path, line=row.line_of(key), field=f"{where}.{key}") from e

        memory = value("memory", parse_bytes)
        count = value("count", parse_count, 1)
        cost = value("cost", _non_negative_float, 1.0)
        labels = value("labels", _labels, {})
        if "servers" in row:
            if "count" in row:
                raise InputError("servers run on one device: give each device its own entry, without count",
                                 path=path, line=row.line_of("servers"), field=f"{where}.servers")
            servers[str(row["name"])] = value("servers", _server_names)
        names = [str(row["name"])] if "count" not in row else [f"{row['name']}-{k}" for k in range(1, count + 1)]
        devices.extend(Device(name, {Resource.GPU_MEMORY: memory}, labels, cost) for name in names)
    seen: set[str] = set()
    for device in devices:
        if device.name in seen:
            raise InputError(f"device name {device.name!r} appears twice", path=path, line=rows.line, field="devices")
        seen.add(device.name)
    return PlannedDevices(tuple(devices), servers)


def _non_negative_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative number")
    return float(value)


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of label names to values")
    return {str(k): str(v) for k, v in value.items()}


def _server_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of server names")
    return tuple(value)
