"""The exporter daemon: Triton pollers, the sampler loop, the HTTP server, and their shutdown.

Devices and processes are sampled at ``sample_hz`` on their own thread, independent of scrapes,
so a spike of a few hundred milliseconds between two scrapes still reaches the peak store.
Triton is polled on one thread per server at a slower beat: its answers (which models are loaded,
their compute counters) change slowly, and a slow or dead server must never stall the sampler.
"""

from __future__ import annotations

import enum
import gc
import logging
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from typing import Callable

from gpupack.addresses import host_and_port
from gpupack.domain import Resource
from gpupack.errors import InputError
from gpupack.exporter.attribution import Attribution, Attributor, ServerInputs
from gpupack.exporter.collector import SnapshotCollector
from gpupack.exporter.pages import PageRenderer
from gpupack.exporter.peaks import SERVER_MODEL, PeakKey, PeakStore
from gpupack.exporter.server import ExporterHttpServer
from gpupack.exporter.settings import ExporterSettings
from gpupack.servers import ServerConfig
from gpupack.exporter.snapshot import ServerState, Snapshot, SnapshotHolder
from gpupack.measurement import SourceError
from gpupack.measurement.host import HostReading, HostSource
from gpupack.measurement.nvml import NvmlDoor, NvmlSource
from gpupack.exporter.triton_source import TritonClient, TritonReading, TritonSource
from gpupack.exporter.usage import ModelUsage

log = logging.getLogger(__name__)

TRITON_POLL_SECONDS = 1.0
_MEMORY, _UTILIZATION = Resource.GPU_MEMORY.value, Resource.GPU_UTILIZATION.value


class TritonPoller:
    """Keeps the latest reading of one server; ``generation`` rises with each new reading."""

    def __init__(self, source: TritonSource, interval_seconds: float = TRITON_POLL_SECONDS) -> None:
        self.source = source
        self.interval_seconds = interval_seconds
        self.reading: TritonReading | None = None
        self.up = False
        self.generation = 0
        self.errors = 0
        self.first_poll_done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gpupack-triton-{source.server.name}", daemon=True)

    def poll(self) -> None:
        try:
            self.reading, self.up = self.source.read(), True
            self.generation += 1
        except SourceError as e:
            if self.up or self.errors == 0:
                log.warning("%s", e)
            self.up = False
            self.errors += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        # The client is made and used on this thread only: tritonclient.http is gevent-based and
        # refuses to be used from a thread other than the one that created it.
        while not self._stop.is_set():
            self.poll()
            self.first_poll_done.set()
            self._stop.wait(self.interval_seconds)


class Sampler:
    """One sample: read devices and processes, attribute, record peaks, swap the snapshot."""

    def __init__(
        self,
        settings: ExporterSettings,
        pollers: dict[str, TritonPoller],
        store: PeakStore,
        holder: SnapshotHolder,
        *,
        hosts: dict[str, HostSource] | None = None,
        nvml: NvmlSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.pollers = pollers
        self.store = store
        self.holder = holder
        self.hosts = hosts if hosts is not None else {s.name: HostSource(s) for s in settings.servers if _local(s)}
        self.nvml = nvml
        self.clock = clock
        self.attributor = Attributor(settings.profile)
        self.errors: Counter[str] = Counter()
        self._host_readings: dict[str, HostReading] = {}
        self._seen_generation: dict[str, int] = {}
        self._triton_now: dict[str, TritonReading] = {}
        self._triton_before: dict[str, TritonReading] = {}
        self._last_loaded: dict[str, frozenset[tuple[str, str, str, str]]] = {}
        self._last_devices: dict[str, tuple] = {}
        self._recorded_models: tuple[ModelUsage, ...] = ()
        self._recorded_ids: set[int] = set()
        self._recorded_bucket: int | None = None
        self._models_handed_on = False
        self._loaded_now: dict[str, frozenset[tuple[str, str, str, str]]] = {}
        self._loaded_all: frozenset[tuple[str, str, str, str]] = frozenset()

    def sample(self) -> Snapshot:
        started = time.perf_counter()
        now = self.clock()
        gpus = self.nvml.read() if self.nvml else ()
        inputs = [self._server_inputs(server) for server in self.settings.servers]
        attribution = self.attributor.attribute(inputs, gpus, host_devices="host" in self.settings.backends)
        self._record(attribution, now)
        snapshot = self._snapshot(attribution, now, time.perf_counter() - started)
        self.holder.swap(snapshot)
        return snapshot

    def _server_inputs(self, server: ServerConfig) -> ServerInputs:
        poller = self.pollers[server.name]
        previous_host = self._host_readings.get(server.name)
        host = None
        try:
            if server.name in self.hosts:
                host = self.hosts[server.name].read()
                self._host_readings[server.name] = host
        except SourceError:
            self._host_readings.pop(server.name, None)
            # Without the host backend a remote server has no local process: that is expected.
            if "host" in self.settings.backends and poller.up:
                self.errors["host"] += 1
        reading, generation = (poller.reading, poller.generation) if poller.up else (None, 0)
        is_new = generation != self._seen_generation.get(server.name)
        if is_new and reading is not None:
            if server.name in self._triton_now:
                self._triton_before[server.name] = self._triton_now[server.name]
            self._triton_now[server.name] = reading
            self._seen_generation[server.name] = generation
        return ServerInputs(
            server=server.name,
            triton=reading,
            previous_triton=self._triton_before.get(server.name),
            host=host,
            previous_host=previous_host,
            triton_is_new=is_new,
        )

    def _record(self, attribution: Attribution, now: float) -> None:
        # A usage handed on unchanged from the last sample (the attributor reuses them while their
        # inputs stand still) was recorded then, in this same bucket: only the others are looked at.
        bucket = self.store.bucket_start_seconds(now)
        recorded_ids = self._recorded_ids if bucket == self._recorded_bucket else set()
        values: list[tuple[PeakKey, float]] = []
        sources = []
        for m in attribution.models:
            if id(m) in recorded_ids:
                continue
            if m.memory_bytes is not None:
                values.append(((m.server, m.model, m.version, m.device, _MEMORY), float(m.memory_bytes)))
            if m.utilization_ratio is not None:
                values.append(((m.server, m.model, m.version, m.device, _UTILIZATION), m.utilization_ratio))
            if m.memory_source:
                sources.append(((m.server, m.model, m.version, m.device), m.memory_source))
        for (server, device), remainder in attribution.unattributed_memory_bytes.items():
            values.append(((server, SERVER_MODEL, "", device, _MEMORY), float(remainder)))
        self.store.record(values, now)
        self.store.record_sources(sources)
        self.store.flush()
        # The ids stay valid while the snapshot's tuple keeps these usages alive.
        ids = {id(m) for m in attribution.models}
        self._models_handed_on = ids == self._recorded_ids
        self._recorded_models, self._recorded_bucket, self._recorded_ids = attribution.models, bucket, ids

    def _snapshot(self, attribution: Attribution, now: float, duration_seconds: float) -> Snapshot:
        previous = self.holder.get()
        up = {name: poller.up for name, poller in self.pollers.items()}
        if not self._models_handed_on:  # the same usages as the last sample: the same loaded series
            loaded_by_server: dict[str, set[tuple[str, str, str, str]]] = defaultdict(set)
            for m in attribution.models:
                if m.loaded:
                    loaded_by_server[m.server].add((m.server, m.model, m.version, m.device))
            self._loaded_now = {server: frozenset(keys) for server, keys in loaded_by_server.items()}
            self._loaded_all = frozenset().union(*self._loaded_now.values())
        loaded = self._loaded_all
        devices = list(attribution.devices)
        stale: set[str] = set()
        present = {d.device for d in devices}
        for server in self.settings.servers:
            if up[server.name]:
                self._last_loaded[server.name] = self._loaded_now.get(server.name, frozenset())
                self._last_devices[server.name] = tuple(d for d in devices if server.name in d.servers)
                continue
            # A server that is down keeps showing its last known models and devices, marked stale.
            loaded |= self._last_loaded.get(server.name, frozenset())
            for device in self._last_devices.get(server.name, ()):
                if device.device not in present:
                    devices.append(device)
                    present.add(device.device)
                    stale.add(device.device)
        errors = Counter(self.errors)
        errors["triton"] = sum(p.errors for p in self.pollers.values())
        if self.nvml is not None:
            errors["nvml"] = sum(self.nvml.door.skipped.values())
        return Snapshot(
            generated_at_seconds=now,
            window_seconds=self.settings.peak_window_seconds,
            servers=tuple(ServerState(s.name, s.url, up[s.name], not up[s.name]) for s in self.settings.servers),
            devices=tuple(devices),
            stale_devices=frozenset(stale),
            models=attribution.models,
            loaded=frozenset(loaded),
            unattributed_memory_bytes=attribution.unattributed_memory_bytes,
            peaks=self.store.peaks(),
            sources=self.store.sources() if self.store.peaks() is not previous.peaks else previous.sources,
            collect_duration_seconds=duration_seconds,
            collect_errors_total=errors,
            last_collect_timestamp_seconds=now,
        )


def settle_heap() -> None:
    """Take what exists at start-up (imports, clients, loaded peaks) out of the cyclic collector's view.

    Process-wide, so the daemon's entry point calls it once the exporter has started, not the
    :class:`Exporter` (which tests and benchmarks also build in processes of their own).

    It lives as long as the process, yet a full collection walks all of it -- tens of thousands of
    objects, ~15 ms holding the GIL -- and snapshots of thousands of objects at 5 Hz trigger one
    every few seconds: that was the slowest scrape in a hundred. Frozen, a full collection walks
    only the current snapshots. Garbage is collected first so that none of it is kept forever.

    The young generation is then let grow to :data:`YOUNG_GENERATION_OBJECTS`. At CPython's 700 a
    sample, a render or a poll of thousands of models ran dozens of young collections, so objects
    that live one sample (a snapshot's usages, a render's families) were promoted and then died in
    the old generation, which made a full collection (25-120 ms holding the GIL at 5,000 models)
    come every two seconds: most of the slow scrapes, and 10% of a core. Grown, they die young,
    freed by their reference counts before any collection sees them. Only cyclic garbage (the
    exporter makes next to none) waits longer to go.
    """
    gc.collect()
    gc.freeze()
    _, *older = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_OBJECTS, *older)


YOUNG_GENERATION_OBJECTS = 50_000


SWITCH_INTERVAL_SECONDS = 0.0005


def shorten_switch_interval() -> None:
    """Let a scrape's thread have the interpreter within half a millisecond of asking.

    Process-wide, so, like :func:`settle_heap`, the daemon's entry point calls it. Sampling and
    rendering are CPU-bound threads; under CPython's default 5 ms switch interval each of the few
    times a scrape's handler wakes from the socket it may wait 5 ms for them, and a scrape that
    only sends ready bytes took 30 ms at 5,000 models. Shorter slices cost the busy threads a few
    more switches, not time.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


def _local(server: ServerConfig) -> bool:
    """Whether the server's processes can be on this machine (for host readings and NVML PIDs)."""
    host, _ = host_and_port(server.url)
    return server.pid is not None or host in ("localhost", "::1") or host.startswith("127.")


class _State(enum.Enum):
    STOPPED = "stopped"
    RUNNING = "running"
    STOPPING = "stopping"


class Exporter:
    """Everything wired together. Collaborators can be passed in; defaults are the real ones."""

    def __init__(
        self,
        settings: ExporterSettings,
        *,
        client_factory: Callable[[ServerConfig], TritonClient] | None = None,
        nvml_door: NvmlDoor | None = None,
        hosts: dict[str, HostSource] | None = None,
        clock: Callable[[], float] = time.time,
        triton_poll_seconds: float = TRITON_POLL_SECONDS,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._state = _State.STOPPED
        self._wake = threading.Event()
        self.holder = SnapshotHolder(Snapshot(generated_at_seconds=clock(), window_seconds=settings.peak_window_seconds))
        self._sampler_idle = threading.Event()
        self._sampler_idle.set()
        collector = SnapshotCollector(self.holder.get, settings.families, {s.name: s.models for s in settings.servers})
        self.pages = PageRenderer(self.holder, collector, sampler_idle=self._sampler_idle)
        try:
            self.http = ExporterHttpServer(settings.listen_host, settings.listen_port, self.holder.get, self.pages,
                                           self.healthy)
        except OSError as e:
            reason = (e.strerror or str(e)).lower()  # most often a second exporter on the same port
            raise InputError(f"cannot listen on {settings.listen_host}:{settings.listen_port}: {reason}") from e
        self.store = PeakStore(settings.state_dir / "peaks.sqlite3", settings.peak_window_seconds)
        self.pollers = {s.name: TritonPoller(TritonSource(s, client_factory), triton_poll_seconds)
                        for s in settings.servers}
        nvml = NvmlSource(nvml_door) if "nvml" in settings.backends else None
        self.sampler = Sampler(settings, self.pollers, self.store, self.holder, hosts=hosts, nvml=nvml, clock=clock)
        self._thread = threading.Thread(target=self._run, name="gpupack-sampler", daemon=True)
        self._last_sample_monotonic = 0.0
        # How late each sample started against its schedule (the latest ones), for the benchmark.
        self.sample_lateness_seconds: deque[float] = deque(maxlen=10_000)

    @property
    def url(self) -> str:
        host, port = self.http.address
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"

    def healthy(self) -> bool:
        interval = self.settings.sample_interval_seconds
        return self._state is _State.RUNNING and time.monotonic() - self._last_sample_monotonic < max(5.0, 10 * interval)

    def start(self) -> "Exporter":
        self._state = _State.RUNNING
        for poller in self.pollers.values():
            poller.start()
        for server in self.settings.servers:  # so the first sample already knows which models are loaded
            self.pollers[server.name].first_poll_done.wait(server.timeout_seconds + 1.0)
        self._thread.start()
        self.pages.start()
        self.http.start()
        return self

    def shutdown(self) -> None:
        """Stop sampling, then pollers, rendering, HTTP, then close the store: the last sample is kept."""
        if self._state is not _State.RUNNING:
            return
        self._state = _State.STOPPING
        self._wake.set()
        self._thread.join()
        for poller in self.pollers.values():
            poller.stop()
        self.pages.stop()
        self.http.stop()
        self.store.close()
        if self.sampler.nvml is not None:
            self.sampler.nvml.door.shutdown()
        self._state = _State.STOPPED

    def __enter__(self) -> "Exporter":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _run(self) -> None:
        interval = self.settings.sample_interval_seconds
        due = time.monotonic()
        while self._state is _State.RUNNING:
            started = time.monotonic()
            self.sample_lateness_seconds.append(started - due)
            if started - due > interval:  # a stall: samples skipped, not caught up in a burst
                due = started
            self._sampler_idle.clear()  # the renderer gives way until the sample is in
            try:
                self.sampler.sample()
            except Exception:  # noqa: BLE001 - one bad sample must not end the daemon
                self.sampler.errors["sampler"] += 1
                log.exception("sample failed")
            finally:
                self._sampler_idle.set()
            self._last_sample_monotonic = time.monotonic()
            due += interval  # against the schedule: a sample that overruns makes the next one late
            self._wake.wait(max(0.0, due - time.monotonic()))
