"""One server's GPU attribution worked out once per Triton poll, not once per sample.

Which models are on which GPU and what measures each change only with a Triton poll, a backend
process starting or ending, or a load delta; a sample at 5 Hz then only reads the processes' memory
and SM shares and splits the GPU's utilisation. At 5,000 models that is most of a sample's work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from gpupack.measurement.host import HostReading
from gpupack.measurement.nvml import GpuReading
from gpupack.exporter.triton_source import TritonReading
from gpupack.exporter.usage import ModelKey, ModelUsage, apportion


def triton_layout(triton: TritonReading) -> tuple:
    """What of a reading places and measures its models: all of it but the moving statistics."""
    return (triton.gpu_uuids, tuple((m.model, m.version, m.instance_groups, m.memory_usage, m.gpu_uuids)
                                    for m in triton.models))


def backend_key(host: HostReading | None) -> tuple[tuple[int, str, str], ...]:
    return tuple((b.pid, b.model, b.version) for b in host.backends) if host else ()


def gpu_key(gpus: tuple[GpuReading, ...]) -> tuple[tuple[str, int, str, frozenset[int]], ...]:
    return tuple((g.device, g.index, g.kind, frozenset(g.process_memory_bytes)) for g in gpus)


@dataclass(frozen=True, slots=True)
class Placed:
    """One model on one GPU: its backend processes there, and its usage when none measures it."""

    key: ModelKey
    pids: tuple[int, ...]
    unmeasured: ModelUsage  # memory from Triton, a load delta or a profile; no utilisation yet


class GpuPlan:
    """The models on one GPU. When no process of theirs is on it, memory is the same from sample to
    sample and only the apportioned utilisation moves: the split is worked out once, and the usages
    of the last sample are handed on while the GPU's utilisation does not change."""

    def __init__(self, device: str, placed: tuple[Placed, ...], shares: Mapping[ModelKey, float]) -> None:
        self.device, self.placed, self._shares = device, placed, shares
        self._measured = any(p.pids for p in placed)
        picked = [p.key in shares for p in placed]
        total = sum(shares[p.key] for p, pick in zip(placed, picked) if pick)
        self._split = [(shares[p.key] / total if total > 0 else 0.0) if pick else None for p, pick in zip(placed, picked)]
        self._last: tuple[float | None, list[ModelUsage]] | None = None

    def usage(self, gpu: GpuReading) -> list[ModelUsage]:
        if self._measured:
            return self._measured_usage(gpu)
        if self._last is not None and self._last[0] == gpu.utilization_ratio:
            return self._last[1]
        left = gpu.utilization_ratio
        if left is None:
            found = [p.unmeasured for p in self.placed]
        else:
            left = max(0.0, left)
            found = [p.unmeasured if share is None else
                     ModelUsage(m.server, m.model, m.version, m.device, m.memory_bytes, m.memory_source,
                                left * share, "apportioned", m.loaded)
                     for p, share in zip(self.placed, self._split) for m in (p.unmeasured,)]
        self._last = (gpu.utilization_ratio, found)
        return found

    def _measured_usage(self, gpu: GpuReading) -> list[ModelUsage]:
        found = []
        for p in self.placed:
            m = p.unmeasured
            if p.pids:
                sm = [gpu.process_sm_ratio[pid] for pid in p.pids if pid in gpu.process_sm_ratio]
                m = ModelUsage(m.server, m.model, m.version, m.device, sum(gpu.process_memory_bytes[pid] for pid in p.pids),
                               "process", sum(sm) if sm else None, "process" if sm else None, m.loaded)
            found.append(m)
        return apportion(found, gpu.utilization_ratio, self._shares)


@dataclass(frozen=True)
class ServerPlan:
    triton: TritonReading
    previous_triton: TritonReading | None
    backends: tuple[tuple[int, str, str], ...]
    server_pids: frozenset[int]
    gpus_key: tuple[tuple[str, int, str, frozenset[int]], ...]
    load_deltas_version: int
    layout: tuple
    gpus: tuple[GpuPlan, ...]
    shares: Mapping[ModelKey, float]  # the compute-time shares the GPU plans split utilisation by

    def fits(self, triton: TritonReading, previous_triton: TritonReading | None, host: HostReading | None,
             gpus: tuple[GpuReading, ...], server_pids: frozenset[int], load_deltas_version: int) -> bool:
        """Whether this plan still holds: the same Triton readings and nothing else it rests on moved."""
        return (self.triton is triton and self.previous_triton is previous_triton
                and self.load_deltas_version == load_deltas_version and self.server_pids == server_pids
                and self.backends == backend_key(host) and self.gpus_key == gpu_key(gpus))
