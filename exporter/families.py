"""The series families /metrics can carry, and the operator's choice of them (``--metrics``).

Names are as a scrape shows them (a counter with its ``_total``), so what an operator reads in a
scrape is what they write in the list; like dcgm-exporter's collectors file, a family left out
costs Prometheus nothing. Compiled once by the settings into a :class:`FamilySelection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from gpupack.config import split_list

DEVICE_FAMILIES = (
    "gpupack_device_info",
    "gpupack_device_memory_used_bytes",
    "gpupack_device_memory_total_bytes",
    "gpupack_device_utilization_ratio",
    "gpupack_device_memory_bandwidth_utilization_ratio",
    "gpupack_device_power_watts",
    "gpupack_device_temperature_celsius",
)
# One series per model and device each (the memory and utilisation ones also carry `source`).
MODEL_FAMILIES = (
    "gpupack_model_memory_bytes",
    "gpupack_model_memory_peak_bytes",
    "gpupack_model_utilization_ratio",
    "gpupack_model_utilization_peak_ratio",
)
SERVER_FAMILIES = (
    "gpupack_server_unattributed_memory_peak_bytes",
    "gpupack_server_up",
    "gpupack_server_unattributed_memory_bytes",
)
SELF_FAMILIES = (
    "gpupack_collect_errors_total",
    "gpupack_collect_duration_seconds",
    "gpupack_last_collect_timestamp_seconds",
)
FAMILIES = DEVICE_FAMILIES + MODEL_FAMILIES + SERVER_FAMILIES + SELF_FAMILIES


@dataclass(frozen=True)
class FamilySelection:
    names: frozenset[str] = frozenset(FAMILIES)

    def __contains__(self, name: object) -> bool:
        return name in self.names


ALL_FAMILIES = FamilySelection()


def parse_family_selection(value: Any) -> FamilySelection:
    """A comma-separated string (flag, environment) or a list (config file) of names or globs
    (``gpupack_device_*``); each must match a family, so a typo is an error, not a silent gap."""
    patterns = split_list(value)
    if not patterns:
        raise ValueError("names no series family (leave it out to export them all)")
    chosen: set[str] = set()
    for pattern in patterns:
        matched = {name for name in FAMILIES if fnmatchcase(name, pattern)}
        if not matched:
            raise ValueError(f"{pattern!r} matches no series family (known: {', '.join(FAMILIES)})")
        chosen |= matched
    return FamilySelection(frozenset(chosen))
