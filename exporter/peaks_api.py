"""``GET /api/v1/peaks``: the recorded peaks as JSON, the contract with the rules engine.

Field names are fixed by that contract. Unread values are omitted, never null.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gpupack.domain import Resource
from gpupack.exporter.peaks import SERVER_MODEL
from gpupack.exporter.snapshot import Snapshot

_MEMORY, _UTILIZATION = Resource.GPU_MEMORY.value, Resource.GPU_UTILIZATION.value


def peaks_document(snap: Snapshot) -> dict[str, Any]:
    return {
        "generated_at_seconds": snap.generated_at_seconds,
        "window_seconds": snap.window_seconds,
        "servers": [{"server": s.server, "url": s.url, "up": s.up, "stale": s.stale} for s in snap.servers],
        "devices": _devices(snap),
        "models": _models(snap),
    }


def _devices(snap: Snapshot) -> list[dict[str, Any]]:
    baselines: dict[str, float] = defaultdict(float)
    for (server, model, _, device, metric), value in snap.peaks.items():
        if model == SERVER_MODEL and metric == _MEMORY:
            baselines[device] += value  # each server on a device pays its own baseline
    result = []
    for d in snap.devices:
        capacity: dict[str, float] = {_UTILIZATION: 1.0}
        if d.capacity_bytes is not None:
            capacity[_MEMORY] = d.capacity_bytes
        if d.kind != "cpu":
            capacity[Resource.MEMORY_BANDWIDTH_UTILIZATION.value] = 1.0
        result.append({
            "device": d.device,
            "kind": d.kind,
            "name": d.name,
            "index": d.index,
            "servers": list(d.servers),
            "labels": dict(d.labels),
            "capacity": capacity,
            "server_baseline": {_MEMORY: baselines[d.device]} if d.device in baselines else {},
            "stale": d.device in snap.stale_devices,
        })
    return result


def _models(snap: Snapshot) -> list[dict[str, Any]]:
    peaks: dict[tuple[str, str, str, str], dict[str, float]] = defaultdict(dict)
    for (server, model, version, device, metric), value in snap.peaks.items():
        if model != SERVER_MODEL:
            peaks[(server, model, version, device)][metric] = value
    current = {(m.server, m.model, m.version, m.device): m for m in snap.models}
    result = []
    for key in sorted(set(peaks) | set(current) | set(snap.loaded)):
        server, model, version, device = key
        loaded = key in snap.loaded
        entry: dict[str, Any] = {"server": server, "model": model, "version": version, "device": device,
                                 "loaded": loaded}
        usage = current.get(key)
        source = usage.memory_source if usage and usage.memory_source else snap.sources.get(key)
        if source:
            entry["source"] = source
        # A model whose process outlives its unload has current memory, but the rules engine must
        # not count it as placed here: it gets neither ``loaded`` nor ``current``.
        if usage is not None and loaded:
            values = {_MEMORY: usage.memory_bytes, _UTILIZATION: usage.utilization_ratio}
            entry["current"] = {k: v for k, v in values.items() if v is not None}
        entry["peaks"] = dict(peaks.get(key, {}))
        result.append(entry)
    return result
