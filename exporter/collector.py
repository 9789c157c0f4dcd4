"""Prometheus exposition of the current snapshot (a custom collector: nothing to ``remove()``).

Series of a model that is gone simply stop appearing; values that could not be read are left
out, never exported as NaN.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpupack.domain import Resource
from gpupack.exporter.exposition import TextRenderer
from gpupack.exporter.peaks import SERVER_MODEL
from gpupack.exporter.snapshot import Snapshot

_MODEL_LABELS = ["server", "model", "version", "device"]
_MEMORY, _UTILIZATION = Resource.GPU_MEMORY.value, Resource.GPU_UTILIZATION.value


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield from _devices(snap)
        yield from _models(snap)
        yield from _servers(snap)
        yield from _self_health(snap)


class MetricsPage:
    """The /metrics body of a snapshot, rendered at most once per snapshot, by the first scrape
    that asks for it.

    Not rendered in the sampler: snapshots come at 5 Hz and scrapes every 15 s or so, and rendering
    every snapshot would cost the sampler more CPU than its sampling. The renderer's line cache
    keeps a scrape's render to reformatting what changed since the previous one.
    """

    def __init__(self) -> None:
        self._renderer = TextRenderer()
        self._rendered: tuple[Snapshot, bytes] | None = None
        self._lock = threading.Lock()  # one render at a time: the renderer's line cache is not shared

    def body(self, snapshot: Snapshot) -> bytes:
        rendered = self._rendered
        if rendered is None or rendered[0] is not snapshot:
            with self._lock:
                rendered = self._rendered
                if rendered is None or rendered[0] is not snapshot:
                    rendered = (snapshot, self._renderer.render(SnapshotCollector(lambda: snapshot).collect()))
                    self._rendered = rendered
        return rendered[1]


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _devices(snap: Snapshot) -> Iterator[Metric]:
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
    yield from (info, used, total, util, bandwidth, power, temperature)


def _models(snap: Snapshot) -> Iterator[Metric]:
    memory = _gauge("gpupack_model_memory_bytes", "Memory attributed to the model now.", _MODEL_LABELS + ["source"])
    util = _gauge("gpupack_model_utilization_ratio", "Device utilisation attributed to the model now.",
                  _MODEL_LABELS + ["source"])
    for m in snap.models:
        labels = [m.server, m.model, m.version, m.device]
        if m.memory_bytes is not None and m.memory_source:
            memory.add_metric(labels + [m.memory_source], m.memory_bytes)
        if m.utilization_ratio is not None and m.utilization_source:
            util.add_metric(labels + [m.utilization_source], m.utilization_ratio)
    memory_peak = _gauge("gpupack_model_memory_peak_bytes", "Highest memory of the model over the peak window.",
                         _MODEL_LABELS)
    util_peak = _gauge("gpupack_model_utilization_peak_ratio", "Highest utilisation of the model over the peak window.",
                       _MODEL_LABELS)
    baseline_peak = _gauge("gpupack_server_unattributed_memory_peak_bytes",
                           "Highest unattributed (server's own) memory over the peak window.", ["server", "device"])
    for (server, model, version, device, metric), value in snap.peaks.items():
        if model == SERVER_MODEL:
            if metric == _MEMORY:
                baseline_peak.add_metric([server, device], value)
        elif metric == _MEMORY:
            memory_peak.add_metric([server, model, version, device], value)
        elif metric == _UTILIZATION:
            util_peak.add_metric([server, model, version, device], value)
    yield from (memory, memory_peak, util, util_peak, baseline_peak)


def _servers(snap: Snapshot) -> Iterator[Metric]:
    up = _gauge("gpupack_server_up", "1 if the Triton server answered its last poll.", ["server"])
    for s in snap.servers:
        up.add_metric([s.server], 1 if s.up else 0)
    unattributed = _gauge("gpupack_server_unattributed_memory_bytes",
                          "Device memory of the server not attributed to any model.", ["server", "device"])
    for (server, device), value in snap.unattributed_memory_bytes.items():
        unattributed.add_metric([server, device], value)
    yield from (up, unattributed)


def _self_health(snap: Snapshot) -> Iterator[Metric]:
    errors = CounterMetricFamily("gpupack_collect_errors", "Readings that failed or were skipped, by source.",
                                 labels=["source"])
    for source, count in sorted(snap.collect_errors_total.items()):
        errors.add_metric([source], count)
    yield errors
    if snap.collect_duration_seconds is not None:
        yield GaugeMetricFamily("gpupack_collect_duration_seconds", "Time the last sample took.",
                                value=snap.collect_duration_seconds)
    if snap.last_collect_timestamp_seconds is not None:
        yield GaugeMetricFamily("gpupack_last_collect_timestamp_seconds", "Unix time of the last sample.",
                                value=snap.last_collect_timestamp_seconds)
