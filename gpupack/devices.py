"""Which device a model runs on, as Triton decides it, and what gpupack calls a CPU-only device.

The exporter attributes a model's memory to the devices its instances run on, and the scheduler
reads today's placement the same way; both go through :func:`instance_groups` and
:meth:`InstanceGroup.on_gpus`, so the two cannot place one model differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

AUTO = "KIND_AUTO"
GPU = "KIND_GPU"


def cpu_device_name(server: str) -> str:
    """A CPU-only server is one device of its own: its memory budget stands in for a GPU's."""
    return f"cpu:{server}"


@dataclass(frozen=True)
class InstanceGroup:
    kind: str  # KIND_GPU, KIND_CPU, KIND_MODEL, KIND_AUTO
    count: int
    gpus: tuple[int, ...] = ()

    def on_gpus(self, server_has_gpus: bool) -> bool:
        """Triton's rule: KIND_GPU instances run on GPUs, KIND_AUTO ones too when the server has
        any, anything else (KIND_CPU, KIND_MODEL) on the host."""
        return self.kind == GPU or (self.kind == AUTO and server_has_gpus)


def instance_groups(config: Mapping[str, Any]) -> tuple[InstanceGroup, ...]:
    """The instance groups of a model config as Triton's API returns it (gRPC's int64 fields as
    strings included). No ``instance_group`` is one KIND_AUTO instance, as Triton reads it."""
    groups: Sequence[Mapping[str, Any]] = config.get("instance_group") or ({},)
    return tuple(
        InstanceGroup(str(g.get("kind", AUTO)), int(g.get("count", 1)), tuple(int(x) for x in g.get("gpus", ())))
        for g in groups
    )
