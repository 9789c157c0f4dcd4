"""What a rebalance plans from: devices, baselines and model peaks, from the exporter, from a
Prometheus that scrapes the exporters (a cluster: one exporter per node), or from a profile.

All sources end in the rules engine's :class:`PeaksSnapshot`, so the rebalancer judges today's
placement with exactly the evaluator the rules engine uses, and hands the solver the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from gpupack.domain import Device, ModelFootprint, Resource
from gpupack.devices import cpu_device_name
from gpupack.errors import InputError
from gpupack.model_configs import DEFAULT_CONFIG_NAME
from gpupack.profiles import Profile, load_profile
from gpupack.rules.demand_source import ObservedDemand, copy_capacities
from gpupack.rules.compiled import Constraints, Fleet, FleetDevice, compile_policies
from gpupack.rules.peaks import DevicePeaks, ModelPeaks, PeaksSnapshot, snapshot_from_json
from gpupack.rules.peaks_source import ExporterSource, PrometheusSource
from gpupack.rules.policy import PolicySet
from gpupack.scheduler.rebalance.config_override import loaded_config
from gpupack.scheduler.rebalance.current import FleetView, GpuIndex
from gpupack.scheduler.demand.cost import capacity_per_second
from gpupack.servers import ServerConfig
from gpupack.units import counted


@dataclass(frozen=True)
class FleetInputs:
    devices: tuple[DevicePeaks, ...]
    footprints: Mapping[str, Mapping[Resource, float]]  # model -> peak per resource, baseline excluded
    gpus: GpuIndex = GpuIndex()
    default_capacity: Mapping[Resource, float] | None = None  # for devices only the servers reveal
    origin: str = ""
    # What throughput policies weigh, as in PeaksSnapshot: each model's demand and one copy's capacity.
    demand_per_second: Mapping[str, float] = field(default_factory=dict)
    copy_capacity_per_second: Mapping[str, float] = field(default_factory=dict)
    profile: Profile | None = None  # where models' searched configurations come from, when planned from one

    def __post_init__(self) -> None:
        object.__setattr__(self, "footprints", MappingProxyType(dict(self.footprints)))

    def loaded_configs(self, fleet: FleetView) -> dict[tuple[str, str], str]:
        """(model, device) -> the profiled configuration each copy runs, read back from the config
        Triton loaded; a copy that matches none of its model's ``configs`` is the profile's default."""
        searched = self.profile.configs if self.profile is not None else {}
        named = {}
        for m in fleet.models:
            if m.model in searched:
                match = loaded_config(m.config, searched[m.model])
                named[(m.model, m.device)] = match.name if match is not None else DEFAULT_CONFIG_NAME
        return named

    def loaded_capacities(self, fleet: FleetView) -> dict[str, float]:
        """One copy's capacity per model, from what is loaded: the least of its copies', so a
        throughput policy never counts a copy as serving more than it can."""
        capacities = dict(self.copy_capacity_per_second)
        searched = self.profile.configs if self.profile is not None else {}
        loaded: dict[str, list[float]] = {}
        for (model, _), name in self.loaded_configs(fleet).items():
            config = next((c for c in searched[model] if c.name == name), None)
            if config is not None:
                loaded.setdefault(model, []).append(capacity_per_second(config, None))
            elif model in self.copy_capacity_per_second:
                loaded.setdefault(model, []).append(self.copy_capacity_per_second[model])
        capacities.update({model: min(values) for model, values in loaded.items()})
        return capacities

    def with_fleet(self, fleet: FleetView) -> "FleetInputs":
        """Add the devices the servers use that the source did not list (profiles list none), and
        take each copy's capacity from the configuration it is loaded in."""
        inputs = self
        if self.profile is not None and self.profile.configs:
            inputs = replace(self, copy_capacity_per_second=self.loaded_capacities(fleet))
        known = {d.device.name for d in self.devices}
        baseline = self.devices[0].server_baseline if self.devices else {}
        added = []
        for device in sorted({m.device for m in fleet.models} - known):
            if self.default_capacity is None:
                raise InputError(f"{self.origin}: device {device} (used by the servers) is unknown to the exporter")
            servers = tuple(sorted({m.server for m in fleet.models if m.device == device}))
            added.append(DevicePeaks(Device(device, self.default_capacity), servers, baseline))
        return replace(inputs, devices=self.devices + tuple(added)) if added else inputs

    def snapshot(self, fleet: FleetView) -> PeaksSnapshot:
        """Today's placement with each model's peaks, for the rules evaluator."""
        self._require_peaks(fleet)
        models = tuple(
            ModelPeaks(m.model, m.device, self._peaks(m.model, m.server), m.server, m.version) for m in fleet.models
        )
        return PeaksSnapshot(self.devices, models, generated_at_seconds=fleet.generated_at_seconds,
                             demand_per_second=self.demand_per_second,
                             copy_capacity_per_second=self.copy_capacity_per_second)

    def constraints(self, fleet: FleetView, policies: PolicySet) -> Constraints:
        """The policies on these devices, each knowing its servers and baseline, for these models."""
        return compile_policies(policies, Fleet(
            tuple(FleetDevice(d.device, d.servers, d.server_baseline) for d in self.devices),
            tuple(m.model for m in self.models(fleet)), self.demand_per_second, self.copy_capacity_per_second))

    def models(self, fleet: FleetView) -> tuple[ModelFootprint, ...]:
        """Every loaded model with its peaks: what the rebalancer places."""
        self._require_peaks(fleet)
        return tuple(ModelFootprint(model, self._peaks(model, "")) for model in sorted(fleet.placement.assignments))

    def server_baseline(self) -> dict[Resource, float]:
        """The largest baseline of any device: what a device the source does not list is assumed to cost."""
        baseline: dict[Resource, float] = {}
        for device in self.devices:
            for resource, value in device.server_baseline.items():
                baseline[resource] = max(value, baseline.get(resource, 0.0))
        return baseline

    def _require_peaks(self, fleet: FleetView) -> None:
        """Every loaded model without a memory peak, named at once: none is planned as free."""
        missing = sorted({(m.model, m.server) for m in fleet.models
                          if Resource.GPU_MEMORY not in self.footprints.get(m.model, {})})
        if missing:
            named = ", ".join(f"{model} (on {server})" for model, server in missing)
            raise InputError(f"{self.origin}: {counted(len(missing), 'loaded model')} without a recorded memory "
                             f"peak, so no plan can count {'it' if len(missing) == 1 else 'them'}: {named}")

    def _peaks(self, model: str, server: str) -> Mapping[Resource, float]:
        """A model without a memory peak is unknown, not free: planning it as 0 bytes could overfill a GPU."""
        where = f" on {server}" if server else ""
        if model not in self.footprints:
            raise InputError(f"{self.origin}: model {model!r} is loaded{where} but has no recorded peaks")
        if Resource.GPU_MEMORY not in self.footprints[model]:
            raise InputError(f"{self.origin}: model {model!r} is loaded{where} but has no recorded memory peak")
        return self.footprints[model]


@dataclass(frozen=True)
class ExporterInputs:
    """The exporter's ``GET /api/v1/peaks``: capacities, baselines, peaks and GPU indices."""

    url: str
    timeout_seconds: float = 10.0

    def __call__(self) -> FleetInputs:
        source = ExporterSource(self.url, self.timeout_seconds)  # the rules engine's source, one fetch
        document = source.document()
        snapshot = snapshot_from_json(document, source.endpoint)
        return FleetInputs(snapshot.devices, snapshot.footprints(), _gpu_index(document), origin=source.endpoint)


def _gpu_index(document: Mapping[str, Any]) -> GpuIndex:
    names = {}
    for device in document.get("devices", []):
        if device.get("kind") == "gpu" and device.get("index") is not None:
            for server in device.get("servers", []):
                names[(server, int(device["index"]))] = device["device"]
    return GpuIndex(names)


@dataclass(frozen=True)
class PrometheusInputs:
    """The exporters' series in Prometheus: what ``gpupack rules run --source prometheus`` judges
    (peaks as ``max_over_time`` over the window, capacities, server baselines), plus each GPU's
    CUDA index from ``gpupack_device_info``, which the scheduler needs to read and set placements.

    ``gpupack_device_info`` names no server: a GPU's servers are those with a baseline or a model
    peak on it, so two nodes that both have a GPU 0 keep them apart by server name.
    """

    url: str
    window_seconds: float
    timeout_seconds: float = 10.0

    def __call__(self) -> FleetInputs:
        source = PrometheusSource(self.url, self.window_seconds, self.timeout_seconds)
        snapshot = source()
        servers_of = {d.device.name: set(d.servers) for d in snapshot.devices}
        for model in snapshot.models:
            if model.server:
                servers_of.setdefault(model.device, set()).add(model.server)
        names = {}
        for sample in source.query('gpupack_device_info{kind="gpu"}'):
            device, index = sample["metric"]["device"], sample["metric"].get("index", "")
            for server in servers_of.get(device, ()) if index.isdigit() else ():
                names[(server, int(index))] = device
        return FleetInputs(snapshot.devices, snapshot.footprints(), GpuIndex(names), origin=f"Prometheus {self.url}")


@dataclass(frozen=True)
class ProfileInputs:
    """Peaks from a profile file; each server a ``cpu:<server>`` device of ``device_memory_bytes``."""

    path: str
    servers: Sequence[ServerConfig]
    device_memory_bytes: int

    def __call__(self) -> FleetInputs:
        profile = load_profile(self.path)
        capacity = {Resource.GPU_MEMORY: float(self.device_memory_bytes)}
        devices = tuple(
            DevicePeaks(Device(cpu_device_name(s.name), capacity), (s.name,), profile.server_baseline) for s in self.servers
        )
        footprints = {m.model: m.peaks for m in profile.models}
        return FleetInputs(devices, footprints, default_capacity=capacity, origin=self.path,
                           copy_capacity_per_second=copy_capacities(profile), profile=profile)


@dataclass(frozen=True)
class DemandInputs:
    """Any of the inputs above, plus what throughput policies weigh (demand, copy capacities), so
    a plan made for a throughput violation has as many copies as the demand needs."""

    inputs: Callable[[], FleetInputs]
    demand: ObservedDemand

    def __call__(self) -> FleetInputs:
        return replace(self.inputs(), demand_per_second=self.demand(),
                       copy_capacity_per_second=dict(self.demand.copy_capacity_per_second))
