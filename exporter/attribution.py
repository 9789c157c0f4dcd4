"""Who uses what: device readings turned into per-model values, each labelled with its source.

Sources, best first (a model gets the best one available for each resource):

- ``process``: the model's own backend processes (Python-backend stubs found by PID), measured
  directly: RSS/CPU time on the host, NVML's per-process memory and SM share on a GPU;
- ``triton``: Triton's per-model ``memory_usage`` statistic, for backends that report it;
- ``load_delta``: the device's memory change seen around the model's load;
- ``profile``: the model's peak from a profile file, when none of the above measures it;
- ``apportioned``: the device utilisation not measured per process, split by each model's share of
  Triton compute time in the interval.

Whatever is not attributed stays with the server as its unattributed remainder, so per-model
values plus remainders add up to the device. A backend process is its model's whether or not Triton
lists the model as READY: a stub outlives its model's unload by a second or so (and starts before
its load completes), and counting it as the server's would raise the server's baseline peak by a
whole model for the rest of the peak window.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

from gpupack.domain import Resource
from gpupack.exporter.gpu_plan import GpuPlan, Placed, ServerPlan, backend_key, gpu_key, triton_layout
from gpupack.measurement.host import HostReading
from gpupack.measurement.nvml import GpuReading
from gpupack.exporter.triton_source import ModelReading, TritonReading
from gpupack.exporter.usage import DeviceUsage, ModelKey, ModelUsage, apportion, compute_shares
from gpupack.profiles import Profile
from gpupack.triton.processes import BackendProcess


@dataclass(frozen=True)
class ServerInputs:
    """What one sample knows about one server; ``previous_*`` are the readings before, for rates."""

    server: str
    triton: TritonReading | None = None
    previous_triton: TritonReading | None = None
    host: HostReading | None = None
    previous_host: HostReading | None = None
    triton_is_new: bool = True  # Triton is polled less often than devices are sampled



@dataclass(frozen=True)
class Attribution:
    devices: tuple[DeviceUsage, ...]
    models: tuple[ModelUsage, ...]
    unattributed_memory_bytes: Mapping[tuple[str, str], int]  # (server, device) -> bytes


class LoadDeltaTracker:
    """Device memory just before and after each model load, for models nothing better measures.

    Only a load that is alone on its device between two Triton polls is attributed: two models
    appearing together cannot be told apart.
    """

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], frozenset[ModelKey]] = {}
        self._used_before: dict[tuple[str, str], int] = {}
        self._deltas: dict[tuple[str, str, str, str], int] = {}
        self.version = 0  # rises whenever a delta is set or dropped

    def observe(self, server: str, device: str, used_bytes: int, loaded: Iterable[ModelKey]) -> None:
        key, now = (server, device), frozenset(loaded)
        before = self._loaded.get(key)
        if before is not None:
            new = now - before
            if len(new) == 1 and key in self._used_before:
                (model, version), delta = next(iter(new)), used_bytes - self._used_before[key]
                if delta > 0 and self._deltas.get((server, model, version, device)) != delta:
                    self._deltas[(server, model, version, device)] = delta
                    self.version += 1
            for model, version in before - now:
                if self._deltas.pop((server, model, version, device), None) is not None:
                    self.version += 1
        self._loaded[key], self._used_before[key] = now, used_bytes

    def delta_bytes(self, server: str, model: ModelKey, device: str) -> int | None:
        return self._deltas.get((server, model[0], model[1], device))


def _cpu_rates(host: HostReading, previous: HostReading | None) -> dict[int, float]:
    """CPU share of the device's cores per PID since the previous reading (PIDs in both only)."""
    if previous is None or previous.server_pid != host.server_pid:
        return {}
    elapsed = host.taken_at_seconds - previous.taken_at_seconds
    if elapsed <= 0:
        return {}
    rates = {}
    for pid, usage in host.processes.items():
        before = previous.processes.get(pid)
        if before is not None:
            rates[pid] = max(0.0, usage.cpu_seconds - before.cpu_seconds) / (elapsed * host.cores)
    return rates



def _with_backend_only_models(triton: TritonReading, backends: Iterable[BackendProcess]) -> tuple[list[ModelReading], set[ModelKey]]:
    """Triton's READY models, plus a bare reading for each model only a backend process names
    (one loading or unloading); the second value is the keys of those not-loaded models."""
    ready = {(m.model, m.version) for m in triton.models}
    not_loaded = {(b.model, b.version) for b in backends} - ready
    return [*triton.models, *(ModelReading(model, version) for model, version in sorted(not_loaded))], not_loaded


def _profile_memory(profile: Profile | None) -> dict[tuple[str, str | None], float]:
    """(model, version or None for any version) -> peak memory bytes."""
    if profile is None:
        return {}
    return {(m.model, m.version): m.peaks[Resource.GPU_MEMORY] for m in profile.models
            if Resource.GPU_MEMORY in m.peaks}


class Attributor:
    """``profile``: peaks to fall back on for models nothing on the machine measures."""

    def __init__(self, profile: Profile | None = None) -> None:
        self.load_deltas = LoadDeltaTracker()
        self._profile_memory_bytes = _profile_memory(profile)
        self._plans: dict[str, ServerPlan] = {}

    def attribute(self, servers: Iterable[ServerInputs], gpus: tuple[GpuReading, ...], host_devices: bool) -> Attribution:
        """``host_devices``: export a ``cpu:<server>`` device per server with a host reading."""
        devices: dict[str, DeviceUsage] = {}
        models: list[ModelUsage] = []
        unattributed: dict[tuple[str, str], int] = {}
        gpu_servers: dict[str, list[str]] = defaultdict(list)
        for inputs in servers:
            if inputs.triton is None:
                continue
            if host_devices and inputs.host is not None:
                device, found, remainder = self._host(inputs)
                devices[device.device] = device
                models += found
                unattributed[(inputs.server, device.device)] = remainder
            if gpus:
                found, remainders = self._gpus(inputs, gpus)
                models += found
                unattributed.update(remainders)
                for server, uuid in remainders:
                    gpu_servers[uuid].append(server)
        for gpu in gpus:
            devices[gpu.device] = DeviceUsage(
                device=gpu.device, kind=gpu.kind, name=gpu.name, index=gpu.index,
                servers=tuple(sorted(gpu_servers.get(gpu.device, ()))),
                capacity_bytes=gpu.memory_total_bytes, memory_used_bytes=gpu.memory_used_bytes,
                utilization_ratio=gpu.utilization_ratio,
                memory_bandwidth_utilization_ratio=gpu.memory_bandwidth_utilization_ratio,
                power_watts=gpu.power_watts, temperature_celsius=gpu.temperature_celsius,
                labels={"parent": gpu.parent} if gpu.parent else {},
            )
        return Attribution(tuple(devices.values()), tuple(models), unattributed)

    def _host(self, inputs: ServerInputs) -> tuple[DeviceUsage, list[ModelUsage], int]:
        host, triton = inputs.host, inputs.triton
        assert host is not None and triton is not None
        rates = _cpu_rates(host, inputs.previous_host)
        device_ratio = sum(rates.values()) if rates else None
        used = host.tree_rss_bytes
        loaded = [(m.model, m.version) for m in triton.models]
        if inputs.triton_is_new:
            self.load_deltas.observe(inputs.server, host.device, used, loaded)
        stubs: dict[ModelKey, list[int]] = defaultdict(list)
        for backend in host.backends:
            stubs[(backend.model, backend.version)].append(backend.pid)
        readings, not_loaded = _with_backend_only_models(triton, host.backends)
        found = []
        for reading in readings:
            key = (reading.model, reading.version)
            memory, memory_source = self._memory(inputs.server, reading, host.device, "CPU", None,
                                                 [host.processes[p].rss_bytes for p in stubs.get(key, ())])
            ratio, ratio_source = None, None
            if key in stubs and rates:
                ratio, ratio_source = sum(rates.get(p, 0.0) for p in stubs[key]), "process"
            found.append(ModelUsage(inputs.server, reading.model, reading.version, host.device,
                                    memory, memory_source, ratio, ratio_source, key not in not_loaded))
        found = apportion(found, device_ratio, compute_shares(triton, inputs.previous_triton))
        device = DeviceUsage(
            device=host.device, kind="cpu", name="host", index=None, servers=(inputs.server,),
            capacity_bytes=host.capacity_bytes, memory_used_bytes=used, utilization_ratio=device_ratio,
        )
        remainder = max(0, used - sum(m.memory_bytes or 0 for m in found))
        return device, found, remainder

    def _memory(self, server: str, reading: ModelReading, device: str, usage_kind: str, device_id: int | None,
                process_bytes: list[int]) -> tuple[int | None, str | None]:
        if process_bytes:
            return sum(process_bytes), "process"
        reported = [u.size_bytes for u in reading.memory_usage
                    if u.kind == usage_kind and (device_id is None or u.device_id == device_id)]
        if reported:
            return sum(reported), "triton"
        delta = self.load_deltas.delta_bytes(server, (reading.model, reading.version), device)
        if delta is not None:
            return delta, "load_delta"
        profiled = self._profile_memory_bytes.get((reading.model, reading.version),
                                                  self._profile_memory_bytes.get((reading.model, None)))
        if profiled is not None:
            return int(profiled), "profile"
        return None, None

    def _gpus(self, inputs: ServerInputs, gpus: tuple[GpuReading, ...]) -> tuple[list[ModelUsage], dict[tuple[str, str], int]]:
        triton, host = inputs.triton, inputs.host
        assert triton is not None
        server_pids = frozenset(host.processes) if host else frozenset()
        plan = self._plans.get(inputs.server)
        if plan is None or not plan.fits(triton, inputs.previous_triton, host, gpus, server_pids, self.load_deltas.version):
            plan = self._plans[inputs.server] = self._plan(inputs, gpus, server_pids, plan)
        by_uuid = {g.device: g for g in gpus}
        if inputs.triton_is_new:
            for gpu_plan in plan.gpus:
                used = by_uuid[gpu_plan.device].memory_used_bytes
                if used is not None:
                    self.load_deltas.observe(inputs.server, gpu_plan.device, used,
                                             [p.key for p in gpu_plan.placed if p.unmeasured.loaded])
            if plan.load_deltas_version != self.load_deltas.version:  # fallback memories may have changed
                plan = self._plans[inputs.server] = self._plan(inputs, gpus, server_pids)
        models: list[ModelUsage] = []
        remainders: dict[tuple[str, str], int] = {}
        for gpu_plan in plan.gpus:
            gpu = by_uuid[gpu_plan.device]
            found = gpu_plan.usage(gpu)
            models += found
            attributed = sum(m.memory_bytes or 0 for m in found)
            if server_pids:
                own = sum(b for pid, b in gpu.process_memory_bytes.items() if pid in server_pids)
                remainders[(inputs.server, gpu.device)] = max(0, own - attributed)
            elif gpu.memory_used_bytes is not None:
                # Without PIDs (a remote server) the device's whole use is the best bound there is.
                remainders[(inputs.server, gpu.device)] = max(0, gpu.memory_used_bytes - attributed)
        return models, remainders

    def _plan(self, inputs: ServerInputs, gpus: tuple[GpuReading, ...], server_pids: frozenset[int],
              old: ServerPlan | None = None) -> ServerPlan:
        """Which models are on which of the server's GPUs, and what measures each: all that only
        changes with a Triton poll, a backend process or a load delta, worked out once for them.
        A poll that only moved the models' statistics keeps the placements and changes the shares."""
        triton, host = inputs.triton, inputs.host
        assert triton is not None
        layout = triton_layout(triton)
        keys = (backend_key(host), server_pids, gpu_key(gpus), self.load_deltas.version)
        if old is not None and old.layout == layout and (old.backends, old.server_pids, old.gpus_key,
                                                         old.load_deltas_version) == keys:
            shares = compute_shares(triton, inputs.previous_triton)
            # Idle models keep their shares (none): the GPU plans, and the usages they hand on, stay.
            gpu_plans = old.gpus if shares == old.shares else tuple(GpuPlan(g.device, g.placed, shares) for g in old.gpus)
            return ServerPlan(triton, inputs.previous_triton, *keys, layout, gpu_plans, shares)
        by_uuid = {g.device: g for g in gpus}
        by_index = {g.index: g.device for g in gpus if g.kind == "gpu"}
        stub_of = {b.pid: (b.model, b.version) for b in host.backends} if host else {}
        stubs_of_model: dict[ModelKey, list[int]] = defaultdict(list)  # not a scan of every stub per model
        for pid, model_key in stub_of.items():
            stubs_of_model[model_key].append(pid)
        readings, not_loaded = _with_backend_only_models(triton, host.backends if host else ())
        placement: dict[ModelKey, set[str]] = defaultdict(set)
        for gpu in gpus:
            for pid in gpu.process_memory_bytes:
                if pid in stub_of:
                    placement[stub_of[pid]].add(gpu.device)
        server_gpus = {g.device for g in gpus if server_pids & set(g.process_memory_bytes)}
        for reading in readings:
            key = (reading.model, reading.version)
            if key not in placement:
                placement[key] = set(reading.gpu_uuids) or {
                    by_index[i] for group in reading.instance_groups for i in group.gpus if i in by_index
                }
            server_gpus |= placement[key]
        if not server_gpus:
            server_gpus = {u for u in triton.gpu_uuids if u in by_uuid}
        for reading in readings:
            key = (reading.model, reading.version)
            if not placement[key] and any(g.on_gpus(bool(server_gpus)) for g in reading.instance_groups):
                placement[key] = set(server_gpus)
        shares = compute_shares(triton, inputs.previous_triton)
        plans = []
        for uuid in sorted(server_gpus):
            gpu = by_uuid[uuid]
            placed = []
            for reading in readings:
                key = (reading.model, reading.version)
                if uuid not in placement[key]:
                    continue
                pids = tuple(pid for pid in stubs_of_model.get(key, ()) if pid in gpu.process_memory_bytes)
                memory, source = (None, None) if pids else self._memory(inputs.server, reading, uuid, "GPU", gpu.index, [])
                placed.append(Placed(key, pids, ModelUsage(inputs.server, reading.model, reading.version, uuid,
                                                            memory, source, loaded=key not in not_loaded)))
            plans.append(GpuPlan(uuid, tuple(placed), shares))
        return ServerPlan(triton, inputs.previous_triton, *keys, layout, tuple(plans), shares)
