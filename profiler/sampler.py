"""Peaks of the device while load runs, read through the same measurement sources as the exporter's.

A probe is one narrow view of "the device this server uses": ``host`` (psutil over the server's
process tree, :class:`~gpupack.measurement.host.HostSource`) or ``nvml`` (the GPUs, through
:class:`~gpupack.measurement.nvml.NvmlSource`). The sampler polls a probe on its own thread,
much faster than the exporter does, because a model's spike can be shorter than a second.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol, TypeVar

from gpupack.measurement import SourceError
from gpupack.measurement.host import HostReading, HostSource
from gpupack.measurement.nvml import NvmlSource

SAMPLE_INTERVAL_SECONDS = 0.02
# CPU time advances in scheduler ticks (10 ms): a rate over less than this is mostly noise.
CPU_RATE_WINDOW_SECONDS = 0.25


@dataclass(frozen=True)
class Peaks:
    """Highest values seen; ``None`` when the probe cannot tell (never reported as zero).

    ``backend_memory_bytes`` is what the server's model backend processes (Python-backend stubs)
    held together, apart from the server's own process: the memory a model has processes of its
    own for. The server process grows by a few MiB on its first loads and requests (a backend's
    library, thread arenas) and keeps it after the model leaves; charged to the model as part of
    "device minus baseline", that growth put every model on a fresh server ~4 MiB above its
    process's high-water mark.
    """

    memory_bytes: int | None = None
    utilization_ratio: float | None = None
    memory_bandwidth_utilization_ratio: float | None = None
    backend_memory_bytes: int | None = None

    def merge(self, other: "Peaks") -> "Peaks":
        return Peaks(_max(self.memory_bytes, other.memory_bytes),
                     _max(self.utilization_ratio, other.utilization_ratio),
                     _max(self.memory_bandwidth_utilization_ratio, other.memory_bandwidth_utilization_ratio),
                     _max(self.backend_memory_bytes, other.backend_memory_bytes))


_N = TypeVar("_N", int, float)


def _max(a: _N | None, b: _N | None) -> _N | None:
    return b if a is None else a if b is None else max(a, b)


class Probe(Protocol):
    def read(self) -> Peaks:
        """The device now. Raises SourceError when the server cannot be read (it died)."""

    def released(self) -> bool:
        """True when no model backend process of the server is left (after an unload)."""


class HostProbe:
    """A CPU-only server: memory is its process tree's RSS (and its backend processes' apart),
    utilisation its CPU share. The backend processes of ``others`` (models loaded beside the run,
    ``--shared-server``) are neither charged to the profiled model nor waited for after an unload."""

    def __init__(self, source: HostSource, others: frozenset[str] = frozenset()) -> None:
        self._source = source
        self._others = others
        self._history: deque[HostReading] = deque()

    def read(self) -> Peaks:
        reading = self._source.read()
        self._history.append(reading)
        while len(self._history) > 1 and reading.taken_at_seconds - self._history[1].taken_at_seconds >= CPU_RATE_WINDOW_SECONDS:
            self._history.popleft()
        backends = [reading.processes[b.pid].rss_bytes for b in reading.backends
                    if b.pid in reading.processes and b.model not in self._others]
        return Peaks(memory_bytes=reading.tree_rss_bytes, utilization_ratio=self._cpu_ratio(reading),
                     backend_memory_bytes=sum(backends) if backends else None)

    def _cpu_ratio(self, reading: HostReading) -> float | None:
        oldest = self._history[0]
        elapsed = reading.taken_at_seconds - oldest.taken_at_seconds
        if elapsed < CPU_RATE_WINDOW_SECONDS or oldest.server_pid != reading.server_pid:
            return None
        # Only processes present at both ends: a stub that started in between has no start value.
        busy = sum(max(0.0, usage.cpu_seconds - oldest.processes[pid].cpu_seconds)
                   for pid, usage in reading.processes.items() if pid in oldest.processes)
        return min(1.0, busy / (elapsed * reading.cores))

    def released(self) -> bool:
        return _only_others_left(self._source, self._others)


def _only_others_left(source: HostSource, others: frozenset[str]) -> bool:
    """No backend process of the server is left but those of the models loaded beside the run."""
    return all(b.model in others for b in source.read().backends)


class NvmlProbe:
    """The GPUs the driver shows (profile on an isolated GPU, as the article advises): memory used
    summed over them, the busiest one's utilisation and memory-bandwidth utilisation."""

    def __init__(self, source: NvmlSource, host: HostSource | None = None, others: frozenset[str] = frozenset()) -> None:
        self._source = source
        self._host = host
        self._others = others

    def read(self) -> Peaks:
        if self._host is not None:
            self._host.read()  # raises SourceError when the server is gone
        gpus = self._source.read()
        if not gpus:
            raise SourceError("NVML shows no GPU (no driver, or no permission): use --backend host")
        memory = [g.memory_used_bytes for g in gpus if g.memory_used_bytes is not None]
        utilization = [g.utilization_ratio for g in gpus if g.utilization_ratio is not None]
        bandwidth = [g.memory_bandwidth_utilization_ratio for g in gpus if g.memory_bandwidth_utilization_ratio is not None]
        return Peaks(sum(memory) if memory else None, max(utilization, default=None), max(bandwidth, default=None))

    def released(self) -> bool:
        return self._host is None or _only_others_left(self._host, self._others)


class PeakSampler:
    """Polls a probe on a thread between ``start()`` and ``stop()``; ``peaks`` is the running max.

    The thread only swaps an immutable :class:`Peaks`; a probe error (the server died) is kept in
    ``error`` for the caller to raise, and ends sampling.
    """

    def __init__(self, probe: Probe, interval_seconds: float = SAMPLE_INTERVAL_SECONDS) -> None:
        self._probe = probe
        self._interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peaks = Peaks()
        self.error: SourceError | None = None

    def start(self) -> "PeakSampler":
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="gpupack-profile-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Peaks:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        return self.peaks

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_seconds) and self.error is None:
            self._sample()

    def _sample(self) -> None:
        if self.error is not None:
            return
        try:
            self.peaks = self.peaks.merge(self._probe.read())
        except SourceError as e:
            self.error = e

    def __enter__(self) -> "PeakSampler":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
