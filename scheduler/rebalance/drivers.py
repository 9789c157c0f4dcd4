"""Which managed server drives each device, and the executor that drives them: one server per
device (mode a), or one server over several GPUs (mode b); nothing in between."""

from __future__ import annotations

from typing import Sequence

from gpupack.domain import Placement
from gpupack.errors import InputError
from gpupack.scheduler.rebalance.executor import ServerPerDeviceExecutor
from gpupack.scheduler.rebalance.step_mechanics import Executor, StepContext
from gpupack.scheduler.rebalance.inputs import FleetInputs
from gpupack.scheduler.rebalance.multi_gpu import GpuSlot, MultiGpuExecutor
from gpupack.servers import ServerConfig


def managed_devices(inputs: FleetInputs, servers: Sequence[ServerConfig]) -> dict[str, str]:
    """Device -> the one managed server that drives it."""
    names = {s.name for s in servers}
    server_of: dict[str, str] = {}
    for entry in inputs.devices:
        managed = [s for s in entry.servers if s in names]
        if len(managed) > 1:
            raise InputError(f"device {entry.device.name} is shared by servers {', '.join(managed)}: rebalancing "
                             "needs one server per device or one server over several GPUs")
        if managed:
            server_of[entry.device.name] = managed[0]
    return server_of


def build_executor(
    inputs: FleetInputs, current: Placement, servers: Sequence[ServerConfig], context: StepContext
) -> Executor:
    """One server per device (mode a), or one server over several GPUs (mode b); nothing in between."""
    endpoints = {s.name: s for s in servers}
    server_of = managed_devices(inputs, servers)
    devices_per_server: dict[str, list[str]] = {}
    for device, server in server_of.items():
        devices_per_server.setdefault(server, []).append(device)
    if all(len(devices) == 1 for devices in devices_per_server.values()):
        return ServerPerDeviceExecutor({d: endpoints[s] for d, s in server_of.items()}, context)
    if len(devices_per_server) > 1:
        raise InputError("several servers each drive several GPUs: rebalance one multi-GPU server per run")
    (server, devices), = devices_per_server.items()
    index_of = {name: index for (owner, index), name in inputs.gpus.names.items() if owner == server}
    missing = sorted(d for d in devices if d not in index_of)
    if missing:
        raise InputError(f"device {missing[0]} of server {server} has no GPU index in the exporter's data")
    slots = {d: GpuSlot(endpoints[server], {"kind": "KIND_GPU", "gpus": [index_of[d]]}) for d in devices}
    return MultiGpuExecutor(slots, current, context)
