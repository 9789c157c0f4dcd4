"""Today's placement, read from the Triton servers themselves.

Each server's repository index says which models are READY; each model's instance_group says on
which device, by Triton's rule (:mod:`gpupack.devices`): instances on the host make the server
its own device ``cpu:<server>``; instances on GPUs name GPU indices, which the exporter's device
list (``/api/v1/peaks``) turns into device names. Without the exporter, no server is known to
have GPUs (KIND_AUTO runs on the host), and a KIND_GPU group's GPU is called ``<server>:gpu<index>``.

A rebalancer must not act on half a picture, so a server that does not answer is an error here,
not a gap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from gpupack.devices import cpu_device_name, instance_groups
from gpupack.domain import Placement
from gpupack.servers import ServerConfig
from gpupack.triton.control import TritonControl


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
    """Every READY model on every server and its devices; raises if any server does not answer."""
    loaded = []
    for endpoint in servers:
        triton = control(endpoint)
        for model, version in sorted(triton.ready_models().items()):
            config = triton.model_config(model)
            for device in devices_of(endpoint.name, config, gpus):
                loaded.append(LoadedModel(endpoint.name, model, version, device, config))
    return FleetView(tuple(loaded), clock())
