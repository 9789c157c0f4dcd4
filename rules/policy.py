"""Validated, frozen policy objects: what the YAML policy language means once parsed.

The loader (``gpupack.rules.loader``) is the only producer; the evaluator and the scheduler are
consumers and never see raw YAML.
"""

from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass, field
from typing import Mapping, Union

from gpupack.domain import Device, Resource


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Action(str, enum.Enum):
    ALERT = "alert"
    REBALANCE = "rebalance"


@dataclass(frozen=True)
class Selector:
    """Which devices, servers and models a policy applies to. Empty means all."""

    devices: tuple[str, ...] = ()  # globs on the device name (GPU UUID or cpu:<server>)
    device_labels: Mapping[str, str] = field(default_factory=dict)  # e.g. {"class": "A100-80GB"}
    servers: tuple[str, ...] = ()  # globs on server names
    models: tuple[str, ...] = ()  # globs on model names

    def matches_device(self, device: Device, server: str | None = None) -> bool:
        if self.devices and not any(fnmatch.fnmatchcase(device.name, pattern) for pattern in self.devices):
            return False
        if any(device.labels.get(key) != value for key, value in self.device_labels.items()):
            return False
        if self.servers and (server is None or not any(fnmatch.fnmatchcase(server, p) for p in self.servers)):
            return False
        return True

    def matches_model(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


@dataclass(frozen=True)
class PolicyCommon:
    name: str
    severity: Severity = Severity.WARNING
    action: Action = Action.ALERT
    selector: Selector = field(default_factory=Selector)
    for_seconds: float = 300.0  # how long a violation lasts before an exported Prometheus alert fires
    runbook_url: str = ""
    source_path: str = ""
    source_line: int = 0

    @property
    def where(self) -> str:
        """``file:line`` of the policy, for messages that point back at the YAML."""
        return f"{self.source_path}:{self.source_line}"


@dataclass(frozen=True)
class CapacityPolicy(PolicyCommon):
    """Per device: server baseline + sum of placed models' peaks <= limit.

    Exactly one of ``max_ratio`` (of the device's capacity) and ``max_bytes`` is set.
    ``headroom_ratio`` is subtracted from a ratio limit (``max: 90%`` with ``headroom: 10%`` is 80%).
    """

    resource: Resource = Resource.GPU_MEMORY
    max_ratio: float | None = None
    max_bytes: int | None = None
    headroom_ratio: float = 0.0

    def limit_for(self, device: Device) -> float:
        """The absolute limit in the resource's base unit on this device."""
        if self.max_bytes is not None:
            return float(self.max_bytes)
        assert self.max_ratio is not None
        return (self.max_ratio - self.headroom_ratio) * device.capacity_of(self.resource)


@dataclass(frozen=True)
class ModelLimitPolicy(PolicyCommon):
    """A single model's peak may not exceed a limit (bytes for memory, a ratio otherwise)."""

    resource: Resource = Resource.GPU_MEMORY
    max_value: float = 0.0


@dataclass(frozen=True)
class FleetPolicy(PolicyCommon):
    max_devices: int = 0


@dataclass(frozen=True)
class PinPolicy(PolicyCommon):
    """Models matching ``selector.models`` may only run on devices matching ``to``."""

    to: Selector = field(default_factory=Selector)


@dataclass(frozen=True)
class AntiAffinityPolicy(PolicyCommon):
    """No two of these models (globs) on the same device."""

    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReplicasPolicy(PolicyCommon):
    """Each model matching ``selector.models`` runs on ``count`` distinct devices."""

    count: int = 1


Policy = Union[CapacityPolicy, ModelLimitPolicy, FleetPolicy, PinPolicy, AntiAffinityPolicy, ReplicasPolicy]


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[Policy, ...] = ()

    def of_type(self, kind: type) -> tuple:
        return tuple(p for p in self.policies if isinstance(p, kind))
