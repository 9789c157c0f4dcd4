"""Today's placement, read from the Triton servers themselves.

Each server's repository index says which models are READY; each model's instance_group says on
which device: a CPU-only server is its own device ``cpu:<server>``; a KIND_GPU group names GPU
indices, which the exporter's device list (``/api/v1/peaks``) turns into device names. Without
the exporter, a GPU is called ``<server>:gpu<index>``.

A rebalancer must not act on half a picture, so a server that does not answer is an error here,
not a gap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from gpupack.domain import Placement
from gpupack.triton_control import ServerEndpoint, TritonControl


def cpu_device(server: str) -> str:
    return f"cpu:{server}"


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
    for group in config.get("instance_group") or [{"kind": "KIND_CPU"}]:
        if group.get("kind") != "KIND_GPU":
            devices.add(cpu_device(server))
            continue
        indices = group.get("gpus") or gpus.of_server(server) or [0]
        devices.update(gpus.device(server, int(index)) for index in indices)
    return sorted(devices)


def read_fleet(
    servers: Sequence[ServerEndpoint],
    gpus: GpuIndex = GpuIndex(),
    control: Callable[[ServerEndpoint], TritonControl] = TritonControl,
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
