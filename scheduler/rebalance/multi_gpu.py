"""Mode (b) of carrying out a step: one server drives several GPUs.

Reload the model with a config whose ``instance_group`` names the target GPUs; Triton keeps the old
instances serving until the new ones are ready, and keeps the old model entirely if the new one
fails to load. A step stays on one server, so there is nothing for a router to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from gpupack.domain import Placement
from gpupack.scheduler.rebalance.step_mechanics import StepContext, StepFailedError, StepMechanics, serving
from gpupack.scheduler.rebalance.steps import Step
from gpupack.servers import ServerConfig
from gpupack.triton.control import TritonControlError


@dataclass(frozen=True)
class GpuSlot:
    """Mode (b): a device is a server plus the instance_group entry that puts instances on it."""

    server: ServerConfig
    instance_group: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"kind": "KIND_GPU", "gpus": [1]}


class MultiGpuExecutor(StepMechanics):
    """Mode (b): reload with a new instance_group; Triton swaps instances without a gap."""

    def __init__(self, slots: Mapping[str, GpuSlot], current: Placement, context: StepContext) -> None:
        super().__init__(context)
        self.slots = MappingProxyType(dict(slots))
        self.placement = current

    def _server_of(self, step: Step) -> ServerConfig:
        servers = {self.slots[d].server for d in (step.source, step.target) if d is not None and d in self.slots}
        if len(servers) != 1 or any(d is not None and d not in self.slots for d in (step.source, step.target)):
            raise StepFailedError(f"{step.describe()}: source and target must be GPUs of one known server")
        return servers.pop()

    def instance_groups(self, config: Mapping[str, Any], devices: tuple[str, ...]) -> list[dict[str, Any]]:
        """One group per device; the instance count per device stays what it was."""
        groups = config.get("instance_group") or [{}]
        count = int(groups[0].get("count", 1))
        return [{"count": count, **self.slots[device].instance_group} for device in devices]

    def execute(self, step: Step) -> None:
        deadline = self.context.clock() + self.context.step_timeout_seconds
        triton = self.triton(self._server_of(step), deadline)
        kept = [*self.placement.assignments.get(step.model, ()), step.target]
        leaving = step.source if step.kind != "reconfigure" else None
        devices = tuple(sorted({d for d in kept if d is not None and d != leaving}))
        self.event("step_started", step, mode="multi-gpu", server=triton.endpoint.name)
        try:
            config = dict(triton.model_config(step.model))
            config = self.override(step, config) or config
            config["instance_group"] = self.instance_groups(config, devices)
            triton.load(step.model, config)
            self.wait_serving(triton, step.model, deadline)
        except TritonControlError as e:
            # Triton keeps the previous instances when a reload fails: nothing to undo but to check.
            still = serving(triton, step.model)
            self.event("step_failed", step, error=str(e), source_serving=still)
            where = f"; {step.model} still serving on {step.source}" if still else ""
            raise StepFailedError(f"{step.describe()}: {e}{where}") from e
        self.placement = Placement({**self.placement.assignments, step.model: devices})
        self.event("step_succeeded", step, instance_group=config["instance_group"])

