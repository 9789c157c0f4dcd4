"""What the evaluator judges: recorded peaks per device and per model, as one frozen snapshot.

Every peak source (exporter, Prometheus, profile file) produces a :class:`PeaksSnapshot`; the
evaluator never knows where the numbers came from. The exporter's ``/api/v1/peaks`` JSON is the
reference shape (see :func:`snapshot_from_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from gpupack.domain import Device, Placement, Resource
from gpupack.errors import ExitStatus, GpupackError


class PeaksUnavailableError(GpupackError):
    """The peaks could not be read (an answer that is not a peaks document, a refused query): every
    policy is unknown, none is ok, nothing acts. A one-shot command exits 3, as for a source that
    does not answer: "unknown", never 1, which would claim a violation was found."""

    exit_status = ExitStatus.UNREACHABLE


@dataclass(frozen=True)
class DevicePeaks:
    device: Device
    servers: tuple[str, ...] = ()
    server_baseline: Mapping[Resource, float] = field(default_factory=dict)  # the server alone, peak
    stale: bool = False  # readings too old to judge: every policy on this device is unknown

    def __post_init__(self) -> None:
        object.__setattr__(self, "server_baseline", MappingProxyType(dict(self.server_baseline)))


@dataclass(frozen=True)
class ModelPeaks:
    """One model on one device; ``loaded`` False means unloaded, its peak still inside the window."""

    model: str
    device: str
    peaks: Mapping[Resource, float]
    server: str = ""
    version: str = ""
    loaded: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "peaks", MappingProxyType(dict(self.peaks)))


@dataclass(frozen=True)
class PeaksSnapshot:
    devices: tuple[DevicePeaks, ...]
    models: tuple[ModelPeaks, ...]
    window_seconds: float = 0.0
    generated_at_seconds: float = 0.0
    down_servers: frozenset[str] = frozenset()  # devices these serve are unknown
    # What throughput policies weigh (see gpupack.rules.demand_source); empty: unknown.
    demand_per_second: Mapping[str, float] = field(default_factory=dict)  # model -> peak request rate
    copy_capacity_per_second: Mapping[str, float] = field(default_factory=dict)  # model -> one copy's most

    def placement(self) -> Placement:
        """Today's placement: where each model is loaded now (unloaded entries are history)."""
        return Placement.from_pairs((m.model, m.device) for m in self.models if m.loaded)

    def footprints(self) -> dict[str, dict[Resource, float]]:
        """Each model's peak per resource: the highest over all its entries in the window.

        A model's peak is a property of the model, not of where it runs today: one just moved
        keeps the peak it recorded on its old device instead of starting from nothing.
        """
        result: dict[str, dict[Resource, float]] = {}
        for entry in self.models:
            peaks = result.setdefault(entry.model, {})
            for resource, value in entry.peaks.items():
                peaks[resource] = max(value, peaks.get(resource, value))
        return result


def _resources(values: Mapping[str, Any] | None, where: str) -> dict[Resource, float]:
    result: dict[Resource, float] = {}
    for key, value in (values or {}).items():
        try:
            resource = Resource(key)
        except ValueError:
            continue  # a resource this release does not judge yet
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise PeaksUnavailableError(f"{where}: {key} is {value!r}, not a number")
        result[resource] = float(value)
    return result


def snapshot_from_json(document: Any, origin: str) -> PeaksSnapshot:
    """Parse the exporter's ``/api/v1/peaks`` document; ``origin`` names it in errors."""
    try:
        servers = document.get("servers", [])
        down = frozenset(s["server"] for s in servers if not s.get("up", True) or s.get("stale", False))
        devices = tuple(
            DevicePeaks(
                device=Device(d["device"], _resources(d.get("capacity"), f"{origin}: device {d['device']}"),
                              labels=dict(d.get("labels") or {})),
                servers=tuple(d.get("servers", ())),
                server_baseline=_resources(d.get("server_baseline"), f"{origin}: device {d['device']}"),
                stale=bool(d.get("stale", False)),
            )
            for d in document["devices"]
        )
        models = tuple(
            ModelPeaks(
                model=m["model"],
                device=m["device"],
                peaks=_resources(m.get("peaks"), f"{origin}: model {m['model']}"),
                server=m.get("server", ""),
                version=str(m.get("version", "")),
                loaded=bool(m.get("loaded", True)),
            )
            for m in document["models"]
        )
        return PeaksSnapshot(devices, models, float(document.get("window_seconds", 0.0)),
                             float(document.get("generated_at_seconds", 0.0)), down)
    except (KeyError, TypeError, AttributeError) as e:
        raise PeaksUnavailableError(f"{origin}: not a peaks document (missing or bad {e})") from e
