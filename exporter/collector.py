"""Prometheus exposition of the current snapshot (a custom collector: nothing to ``remove()``).

Series of a model that is gone simply stop appearing; values that could not be read are left
out, never exported as NaN. Families the operator did not choose are not even built, and a
server's model filter drops the series of the models it does not export.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpupack.domain import Resource
from gpupack.exporter.families import ALL_FAMILIES, FamilySelection
from gpupack.exporter.peaks import SERVER_MODEL
from gpupack.servers import ModelFilter
from gpupack.exporter.snapshot import Snapshot

_MODEL_LABELS = ["server", "model", "version", "device"]
_MEMORY, _UTILIZATION = Resource.GPU_MEMORY.value, Resource.GPU_UTILIZATION.value
_EXPORTS_CACHE_LIMIT = 100_000
_MODEL_PEAK_FAMILIES = (
    ("gpupack_model_memory_peak_bytes", "Highest memory of the model over the peak window.", _MEMORY),
    ("gpupack_model_utilization_peak_ratio", "Highest utilisation of the model over the peak window.", _UTILIZATION),
)


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], families: FamilySelection = ALL_FAMILIES,
                 model_filters: Mapping[str, ModelFilter] | None = None) -> None:
        self._snapshot = snapshot
        self._families = families
        self._filters = {server: f for server, f in (model_filters or {}).items() if f != ModelFilter()}
        self._exports: dict[tuple[str, str], bool] = {}  # globs matched once per model, not per render
        # Peaks change far less often than samples come (the sampler hands on the same mapping
        # until one does): their families, immutable once built, are handed out again.
        self._peak_families: tuple[Mapping, tuple[Metric, ...]] | None = None

    def collect(self) -> Iterator[Metric]:
        return self.families(self._snapshot())

    def families(self, snap: Snapshot) -> Iterator[Metric]:
        want = self._families.__contains__
        yield from _devices(snap, want)
        yield from _models(snap, want, self._exported)
        if self._peak_families is None or self._peak_families[0] is not snap.peaks:
            self._peak_families = (snap.peaks, tuple(_peaks(snap, want, self._exported)))
        yield from self._peak_families[1]
        yield from _servers(snap, want)
        yield from _self_health(snap, want)

    def _exported(self, server: str, model: str) -> bool:
        if server not in self._filters:
            return True
        known = self._exports.get((server, model))
        if known is None:
            if len(self._exports) > _EXPORTS_CACHE_LIMIT:
                self._exports.clear()
            known = self._exports[(server, model)] = self._filters[server].exports(model)
        return known


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _devices(snap: Snapshot, want: Callable[[str], bool]) -> Iterator[Metric]:
    info = _gauge("gpupack_device_info", "Device identity (GPU/MIG UUID or cpu:<server>).",
                  ["device", "kind", "name", "index", "parent"])
    used = _gauge("gpupack_device_memory_used_bytes", "Memory in use on the device.", ["device"])
    total = _gauge("gpupack_device_memory_total_bytes", "Memory capacity of the device.", ["device"])
    util = _gauge("gpupack_device_utilization_ratio", "Device busy ratio (GPU utilisation, or CPU share).", ["device"])
    bandwidth = _gauge("gpupack_device_memory_bandwidth_utilization_ratio",
                       "GPU memory-controller (bandwidth) utilisation.", ["device"])
    power = _gauge("gpupack_device_power_watts", "GPU power draw.", ["device"])
    temperature = _gauge("gpupack_device_temperature_celsius", "GPU temperature.", ["device"])
    for d in snap.devices:
        if d.device in snap.stale_devices:
            continue
        index = "" if d.index is None else str(d.index)
        info.add_metric([d.device, d.kind, d.name, index, d.labels.get("parent", "")], 1)
        for family, value in ((used, d.memory_used_bytes), (total, d.capacity_bytes), (util, d.utilization_ratio),
                              (bandwidth, d.memory_bandwidth_utilization_ratio), (power, d.power_watts),
                              (temperature, d.temperature_celsius)):
            if value is not None:
                family.add_metric([d.device], value)
    yield from (f for f in (info, used, total, util, bandwidth, power, temperature) if want(f.name))


def _models(snap: Snapshot, want: Callable[[str], bool], exported: Callable[[str, str], bool]) -> Iterator[Metric]:
    """One family at a time, each yielded as soon as it is built: the renderer may pause between
    them, and thousands of models make each one a few milliseconds of work."""
    models = [m for m in snap.models if exported(m.server, m.model)]
    if want("gpupack_model_memory_bytes"):
        memory = _gauge("gpupack_model_memory_bytes", "Memory attributed to the model now.", _MODEL_LABELS + ["source"])
        for m in models:
            if m.memory_bytes is not None and m.memory_source:
                memory.add_metric([m.server, m.model, m.version, m.device, m.memory_source], m.memory_bytes)
        yield memory
    if want("gpupack_model_utilization_ratio"):
        util = _gauge("gpupack_model_utilization_ratio", "Device utilisation attributed to the model now.",
                      _MODEL_LABELS + ["source"])
        for m in models:
            if m.utilization_ratio is not None and m.utilization_source:
                util.add_metric([m.server, m.model, m.version, m.device, m.utilization_source], m.utilization_ratio)
        yield util


def _peaks(snap: Snapshot, want: Callable[[str], bool], exported: Callable[[str, str], bool]) -> Iterator[Metric]:
    peaks = [(key, value) for key, value in snap.peaks.items()
             if key[1] != SERVER_MODEL and exported(key[0], key[1])]
    for name, documentation, resource in _MODEL_PEAK_FAMILIES:
        if want(name):
            family = _gauge(name, documentation, _MODEL_LABELS)
            for (server, model, version, device, metric), value in peaks:
                if metric == resource:
                    family.add_metric([server, model, version, device], value)
            yield family
    if want("gpupack_server_unattributed_memory_peak_bytes"):
        baseline_peak = _gauge("gpupack_server_unattributed_memory_peak_bytes",
                               "Highest unattributed (server's own) memory over the peak window.", ["server", "device"])
        for (server, model, _, device, metric), value in snap.peaks.items():
            if model == SERVER_MODEL and metric == _MEMORY:
                baseline_peak.add_metric([server, device], value)
        yield baseline_peak


def _servers(snap: Snapshot, want: Callable[[str], bool]) -> Iterator[Metric]:
    if want("gpupack_server_up"):
        up = _gauge("gpupack_server_up", "1 if the Triton server answered its last poll.", ["server"])
        for s in snap.servers:
            up.add_metric([s.server], 1 if s.up else 0)
        yield up
    if want("gpupack_server_unattributed_memory_bytes"):
        unattributed = _gauge("gpupack_server_unattributed_memory_bytes",
                              "Device memory of the server not attributed to any model.", ["server", "device"])
        for (server, device), value in snap.unattributed_memory_bytes.items():
            unattributed.add_metric([server, device], value)
        yield unattributed


def _self_health(snap: Snapshot, want: Callable[[str], bool]) -> Iterator[Metric]:
    if want("gpupack_collect_errors_total"):
        errors = CounterMetricFamily("gpupack_collect_errors", "Readings that failed or were skipped, by source.",
                                     labels=["source"])
        for source, count in sorted(snap.collect_errors_total.items()):
            errors.add_metric([source], count)
        yield errors
    if snap.collect_duration_seconds is not None and want("gpupack_collect_duration_seconds"):
        yield GaugeMetricFamily("gpupack_collect_duration_seconds", "Time the last sample took.",
                                value=snap.collect_duration_seconds)
    if snap.last_collect_timestamp_seconds is not None and want("gpupack_last_collect_timestamp_seconds"):
        yield GaugeMetricFamily("gpupack_last_collect_timestamp_seconds", "Unix time of the last sample.",
                                value=snap.last_collect_timestamp_seconds)
