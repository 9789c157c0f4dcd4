"""Today's placement, read from the Triton servers themselves.

Each server's repository index says which models are READY; each model's instance_group says on
which device, by Triton's rule (:mod:`gpupack.devices`): instances on the host make the server
its own device ``cpu:<server>``; instances on GPUs name GPU indices, which the exporter's device
list (``/api/v1/peaks``) turns into device names. Without the exporter, no server is known to
have GPUs (KIND_AUTO runs on the host), and a KIND_GPU group's GPU is called ``<server>:gpu<index>``.

A server that does not answer is marked down with the reason, not skipped in silence and not an
error for the whole fleet: the rebalancer plans for the servers that answer, never onto a down
one, and counts the models it last saw there as at risk (:mod:`.desired`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from gpupack.devices import cpu_device_name, instance_groups
from gpupack.domain import Placement
from gpupack.errors import network_reason
from gpupack.servers import ServerConfig
from gpupack.triton.control import TritonControl, TritonControlError


@dataclass(frozen=True)
class GpuIndex:
    """(server, CUDA index) -> device name, as the exporter reports it."""

    names: Mapping[tuple[str, int], str] = field(default_factory=dict)

    def device(self, server: str, index: int) -> str:
        return self.names.get((server, index), f"{server}:gpu{index}")

    def of_server(self, server: str) -> list[int]:
        return sorted(index for name, index in self.names if name == server)


@dataclass(frozen=True)
class LoadedModel:
    server: str
    model: str
    version: str
    device: str
    # The config Triton runs it with (instance count, batching), to tell which profiled configuration it is
    config: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class FleetView:
    """Where every loaded model is, per server and device, at one moment."""

    models: tuple[LoadedModel, ...]
    generated_at_seconds: float
    down: Mapping[str, str] = field(default_factory=dict)  # server -> why it did not answer

    def is_down(self, servers: Sequence[str]) -> bool:
        """Whether any of these servers (a device's) did not answer: nothing is planned onto it."""
        return any(s in self.down for s in servers)

    @property
    def placement(self) -> Placement:
        return Placement.from_pairs((m.model, m.device) for m in self.models)


def devices_of(server: str, config: Mapping[str, Any], gpus: GpuIndex) -> list[str]:
    """The devices one model's instances run on, from its (complete) config."""
    devices: set[str] = set()
    server_gpus = gpus.of_server(server)
    for group in instance_groups(config):
        if not group.on_gpus(bool(server_gpus)):
            devices.add(cpu_device_name(server))
            continue
        # No gpus list: Triton puts the instances on every GPU the server sees.
        devices.update(gpus.device(server, index) for index in group.gpus or server_gpus or [0])
    return sorted(devices)


def read_fleet(
    servers: Sequence[ServerConfig],
    gpus: GpuIndex = GpuIndex(),
    control: Callable[[ServerConfig], TritonControl] = TritonControl,
    clock: Callable[[], float] = time.time,
) -> FleetView:
    """Every READY model on every server that answers, and its devices; the others are ``down``."""
    loaded: list[LoadedModel] = []
    down: dict[str, str] = {}
    for endpoint in servers:
        triton = control(endpoint)
        try:
            on_server = []
            for model, version in sorted(triton.ready_models().items()):
                config = triton.model_config(model)
                on_server += [LoadedModel(endpoint.name, model, version, device, config)
                              for device in devices_of(endpoint.name, config, gpus)]
        except TritonControlError as e:
            down[endpoint.name] = network_reason(e.__cause__) if e.__cause__ is not None else e.reason
            continue
        loaded += on_server
    return FleetView(tuple(loaded), clock(), MappingProxyType(down))
