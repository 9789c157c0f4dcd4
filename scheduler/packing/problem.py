"""What the placement solver is asked and what it answers, in the types every scheduler part shares.

A :class:`PlacementProblem` is fully validated input: policies have already been turned into
absolute limits, pins, anti-affinity groups and replica counts (``gpupack.scheduler.constraints``),
so the solver never reads YAML or policy objects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Union

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.errors import GpupackError


class InfeasibleError(GpupackError):
    """No placement satisfies the constraints; the message names the models and policies involved."""


class Objective(str, enum.Enum):
    MIN_DEVICES = "min-devices"
    MIN_COST = "min-cost"
    BALANCE = "balance"  # most headroom: minimise the fullest device's highest load/limit ratio
    MIN_MOVES = "min-moves"  # fewest (model, device) pairs that are new compared with problem.current


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: it is a dimension of its problem
class ScopedLimit:
    """A limit on some models only, on some devices: a capacity policy with ``selector.models``
    (only those models' peaks count), or anti-affinity limited to some devices (``resource`` None:
    each member counts 1, at most 1 per device). Devices not in ``limits`` are not limited."""

    name: str  # the policy, for messages
    resource: Resource | None
    demand: Mapping[str, float]  # model -> what it counts (models absent count 0)
    limits: Mapping[str, float]  # device -> limit, baseline included
    baselines: Mapping[str, float] = field(default_factory=dict)  # device -> baseline

    def __post_init__(self) -> None:
        for name in ("demand", "limits", "baselines"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def value(self) -> str:
        """How moves and messages name this limit (as ``Resource.value`` names a resource)."""
        return f"{self.resource.value if self.resource else 'count'} of {self.name}"

    @property
    def is_bytes(self) -> bool:
        return self.resource is not None and self.resource.is_bytes


Dimension = Union[Resource, ScopedLimit]  # what a device is limited in


@dataclass(frozen=True)
class PlacementProblem:
    """Devices, models and the rules that bind them.

    ``limits`` are absolute (bytes, ratios of capacity) and include the server baseline, which is
    paid once on every device that hosts at least one model (``device_baselines`` where a device's
    differs). A resource missing from a device's limits is limited by its capacity; ``math.inf``
    leaves it unconstrained. ``scoped_limits`` count only some models. ``forbidden_groups`` are
    sets of models measured to break a latency budget or a limit together (``gpupack verify``, a
    profile's ``colocations:``): no device holds all of a group, though it may hold any part of it.
    """

    devices: tuple[Device, ...]
    models: tuple[ModelFootprint, ...]
    server_baseline: Mapping[Resource, float] = field(default_factory=dict)
    limits: Mapping[str, Mapping[Resource, float]] = field(default_factory=dict)
    allowed_devices: Mapping[str, frozenset[str]] = field(default_factory=dict)
    anti_affinity: tuple[frozenset[str], ...] = ()
    replicas: Mapping[str, int] = field(default_factory=dict)
    max_devices: int | None = None
    current: Placement | None = None
    constraint_sources: Mapping[str, str] = field(default_factory=dict)
    scoped_limits: tuple[ScopedLimit, ...] = ()
    device_baselines: Mapping[str, Mapping[Resource, float]] = field(default_factory=dict)
    forbidden_groups: tuple[frozenset[str], ...] = ()

    def __post_init__(self) -> None:
        # A group of one would forbid the model everywhere: that is "does not fit", not a colocation.
        small = [sorted(g) for g in self.forbidden_groups if len(g) < 2]
        if small:
            raise ValueError(f"a forbidden group needs at least two models: {small}")
        object.__setattr__(self, "forbidden_groups", tuple(dict.fromkeys(frozenset(g) for g in self.forbidden_groups)))
        object.__setattr__(
            self, "device_baselines",
            MappingProxyType({d: MappingProxyType(dict(v)) for d, v in self.device_baselines.items()}))
        for name in ("server_baseline", "allowed_devices", "replicas", "constraint_sources"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        object.__setattr__(
            self, "limits", MappingProxyType({d: MappingProxyType(dict(v)) for d, v in self.limits.items()})
        )

    def limit(self, device: Device, resource: Resource) -> float:
        device_limits = self.limits.get(device.name, {})
        if resource in device_limits:
            return device_limits[resource]
        return device.capacity_of(resource)

    def baseline(self, device: str, resource: Resource) -> float:
        return self.device_baselines.get(device, self.server_baseline).get(resource, 0.0)


class ProofStatus(str, enum.Enum):
    OPTIMAL = "optimal"  # the device count equals a proven lower bound
    GAP = "gap"  # the best proven lower bound is below the device count
    NOT_ATTEMPTED = "not-attempted"  # the device count was not minimised, so nothing to prove


@dataclass(frozen=True)
class DeviceCountProof:
    """What is known about a device count: proven, or how far from which bound, or why unproven.

    ``bound_source`` names what proved the bound: "combinatorial" (scheduler/packing/bounds.py), "lp"
    (column generation) or "cp-sat". ``note`` says why a stronger proof was not attempted.
    """

    status: ProofStatus
    device_count: int
    lower_bound: int
    bound_source: str
    note: str = ""

    @property
    def gap_devices(self) -> int:
        return self.device_count - self.lower_bound

    @property
    def gap_ratio(self) -> float:
        return self.gap_devices / self.lower_bound if self.lower_bound else 0.0

    def describe(self) -> str:
        if self.status is ProofStatus.OPTIMAL:
            text = f"proven optimal by the {self.bound_source} bound"
        elif self.status is ProofStatus.GAP:
            text = f"gap {self.gap_devices} ({self.gap_ratio:.1%}) to the {self.bound_source} lower bound {self.lower_bound}"
        else:
            text = f"no proof attempted, lower bound {self.lower_bound}"
        return f"{text}; {self.note}" if self.note else text

    def as_dict(self) -> dict[str, object]:
        """For JSON and the audit log: base units, the gap as a ratio 0-1."""
        return {
            "status": self.status.value, "device_count": self.device_count, "lower_bound": self.lower_bound,
            "bound_source": self.bound_source, "gap_devices": self.gap_devices,
            "gap_ratio": round(self.gap_ratio, 6), "note": self.note,
        }


@dataclass(frozen=True)
class PlacementResult:
    placement: Placement
    device_totals: Mapping[str, Mapping[Resource, float]]  # per used device, baseline included
    device_count: int
    lower_bound: int  # on the number of devices
    optimal: bool  # every objective proven optimal
    solve_seconds: float
    method: str  # "first-fit-decreasing", "column-generation", "local-search" or "cp-sat": what found it
    moves: int | None  # new (model, device) pairs compared with problem.current, when given
    proof: DeviceCountProof | None = None
    seconds_by_phase: Mapping[str, float] = field(default_factory=dict)  # where solve_seconds went
