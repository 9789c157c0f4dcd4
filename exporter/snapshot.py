"""The exporter's state after one sample: immutable, swapped in whole by the sampler.

Scrapes and the JSON API read only the current :class:`Snapshot`; they never call NVML or
Triton and never see a half-written sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from gpupack.exporter.usage import DeviceUsage, ModelUsage
from gpupack.exporter.peaks import PeakKey, SeriesKey


@dataclass(frozen=True)
class ServerState:
    server: str
    url: str
    up: bool
    stale: bool  # what is shown for it is older than this sample (it is down or not answering)


@dataclass(frozen=True)
class Snapshot:
    generated_at_seconds: float
    window_seconds: float
    servers: tuple[ServerState, ...] = ()
    devices: tuple[DeviceUsage, ...] = ()
    stale_devices: frozenset[str] = frozenset()  # last known devices of servers that are down
    # Current values: loaded models, and models whose backend process outlives their unload (or
    # starts before their load completes) -- that memory is theirs, not the server's.
    models: tuple[ModelUsage, ...] = ()
    loaded: frozenset[SeriesKey] = frozenset()  # Triton lists them READY; includes a down server's last known models
    unattributed_memory_bytes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    peaks: Mapping[PeakKey, float] = field(default_factory=dict)
    sources: Mapping[SeriesKey, str] = field(default_factory=dict)
    collect_duration_seconds: float | None = None
    collect_errors_total: Mapping[str, int] = field(default_factory=dict)
    last_collect_timestamp_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("unattributed_memory_bytes", "peaks", "sources", "collect_errors_total"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(dict(value)))


class SnapshotHolder:
    """One reference, replaced whole; readers take it once per request."""

    def __init__(self, initial: Snapshot) -> None:
        self._snapshot = initial
        self._listeners: list[Callable[[], None]] = []

    def get(self) -> Snapshot:
        return self._snapshot

    def on_swap(self, listener: Callable[[], None]) -> None:
        """``listener`` is called after each swap, on the sampler's thread: it must only signal."""
        self._listeners.append(listener)

    def swap(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        for listener in self._listeners:
            listener()
