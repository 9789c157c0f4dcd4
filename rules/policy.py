"""Validated, frozen policy objects: what the YAML policy language means once parsed.

The loader (``gpupack.rules.loader``) is the only producer; ``gpupack.rules.compiled`` is the
only reader: it matches selectors against a fleet and hands the evaluator, the scheduler and the
PromQL export the same typed constraints.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping, Union

from gpupack.domain import Resource


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


@dataclass(frozen=True)
class ThroughputPolicy(PolicyCommon):
    """The copies of each selected model together serve at least ``min_ratio`` x its demand x
    (1 + ``headroom_ratio``); with ``max_ratio``, a model whose capacity is above that many times
    its demand while it runs more copies than it needs is over-provisioned (a consolidation signal).

    Demand is the peak of Triton's own request rate over the rules engine's window; a copy's
    capacity is the profile's ``throughput_per_second``. Ratios may exceed 1.
    """

    min_ratio: float = 1.0
    max_ratio: float | None = None
    headroom_ratio: float = 0.0


Policy = Union[CapacityPolicy, ModelLimitPolicy, FleetPolicy, PinPolicy, AntiAffinityPolicy, ReplicasPolicy,
               ThroughputPolicy]


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[Policy, ...] = ()

    def of_type(self, kind: type) -> tuple:
        return tuple(p for p in self.policies if isinstance(p, kind))
