"""Policies + a fleet -> typed, scoped constraints: the one reading of what a policy means.

Selectors are matched here and nowhere else. The evaluator judges a placement against these
constraints, the scheduler turns them into a placement problem, and the PromQL export writes
them as alert rules, so the three cannot disagree about which devices and models a policy
covers, what its limit is on each device, or which server baseline it counts.

A constraint keeps its policy's name, ``file:line`` and action, so every answer points back at
the YAML and the planner knows which constraints it may break (``alert``) and which it may not
(``rebalance``).
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence, Union

from gpupack.domain import Device, Resource
from gpupack.rules.policy import (
    Action,
    AntiAffinityPolicy,
    CapacityPolicy,
    FleetPolicy,
    ModelLimitPolicy,
    PinPolicy,
    Policy,
    PolicySet,
    ReplicasPolicy,
    Selector,
    Severity,
    ThroughputPolicy,
)


@dataclass(frozen=True)
class FleetDevice:
    """A device, the servers that run on it and what those servers cost it with no model loaded."""

    device: Device
    servers: tuple[str, ...] = ()
    baseline: Mapping[Resource, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "baseline", MappingProxyType(dict(self.baseline)))


@dataclass(frozen=True)
class Fleet:
    """What a policy is matched against: the devices and the names of the models to place or judge,
    with what throughput policies weigh: each model's observed demand (inferences per second, the
    peak of its request rate) and what one copy of it serves. A model missing from either is unknown."""

    devices: tuple[FleetDevice, ...]
    models: tuple[str, ...]
    demand_per_second: Mapping[str, float] = field(default_factory=dict)
    copy_capacity_per_second: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Origin:
    """The policy a constraint came from, and how its alerts are written."""

    policy: str
    where: str  # file:line
    action: Action
    severity: Severity = Severity.WARNING
    for_seconds: float = 300.0
    runbook_url: str = ""
    scope: Selector = field(default_factory=Selector)  # the patterns that chose its devices and models

    @property
    def hard(self) -> bool:
        """A rebalance policy must hold in every plan; an alert policy is kept where possible."""
        return self.action is Action.REBALANCE


@dataclass(frozen=True)
class Capacity:
    """On each of ``devices``: baseline + sum of the counted models' peaks <= limit.

    ``models`` None counts every model. A limit is NaN where the device's capacity is unknown.
    ``max_ratio`` (of capacity, headroom taken off) or ``max_bytes`` is the limit before it meets
    a device, for the PromQL export.
    """

    origin: Origin
    resource: Resource
    devices: tuple[str, ...]
    limits: tuple[float, ...]  # per device, in the resource's base unit, baseline included
    baselines: tuple[float, ...]  # per device
    models: frozenset[str] | None = None
    max_ratio: float | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class ModelLimit:
    """Each model of ``models`` placed on one of ``devices`` has a peak <= ``max_value``."""

    origin: Origin
    resource: Resource
    max_value: float
    devices: frozenset[str]
    models: frozenset[str] | None = None


@dataclass(frozen=True)
class FleetMax:
    """The counted models (None: all) use at most ``max_devices`` of ``devices``."""

    origin: Origin
    max_devices: int
    devices: frozenset[str]
    models: frozenset[str] | None = None


@dataclass(frozen=True)
class Allowed:
    """Each of ``models`` placed on a device of ``scope`` must be on one of ``devices`` (a pin)."""

    origin: Origin
    models: frozenset[str]
    devices: frozenset[str]
    scope: frozenset[str]
    to: Selector = field(default_factory=Selector)  # the patterns that chose ``devices``


@dataclass(frozen=True)
class AntiAffinity:
    """At most one of ``models`` on each of ``devices``."""

    origin: Origin
    models: frozenset[str]
    devices: tuple[str, ...]


@dataclass(frozen=True)
class Replicas:
    """Each of ``models`` is placed on at least ``count`` distinct devices of ``devices``."""

    origin: Origin
    models: frozenset[str]
    count: int
    devices: frozenset[str]


@dataclass(frozen=True)
class Throughput:
    """Each of ``models`` (None: every model) has enough copies on ``devices`` to serve what it must.

    ``required_per_second`` is demand x (1 + headroom) x ``min_ratio`` for each model whose demand
    and copy capacity are known; ``over_per_second`` (with ``max_ratio``) is the capacity above
    which a model running more copies than it needs is over-provisioned.
    """

    origin: Origin
    models: frozenset[str] | None
    devices: frozenset[str]
    min_ratio: float
    max_ratio: float | None
    headroom_ratio: float
    required_per_second: Mapping[str, float]
    over_per_second: Mapping[str, float]
    copy_capacity_per_second: Mapping[str, float]

    def copies_needed(self, model: str) -> int | None:
        """The fewest copies that serve the requirement (at least one); None when unknown or when
        no number of copies can (a copy that serves nothing)."""
        if model not in self.required_per_second:
            return None
        capacity = self.copy_capacity_per_second[model]
        if capacity <= 0:
            return None
        return max(1, math.ceil(self.required_per_second[model] / capacity - 1e-9))


Constraint = Union[Capacity, ModelLimit, FleetMax, Allowed, AntiAffinity, Replicas, Throughput]


@dataclass(frozen=True)
class Constraints:
    """All constraints of a policy set on one fleet, in policy order."""

    fleet: Fleet
    items: tuple[Constraint, ...] = ()

    def of_type(self, kind: type) -> tuple:
        return tuple(c for c in self.items if isinstance(c, kind))

    def only(self, keep: "Iterable[str]") -> "Constraints":
        """The constraints of the named policies only."""
        names = set(keep)
        return Constraints(self.fleet, tuple(c for c in self.items if c.origin.policy in names))

    @property
    def policies(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.origin.policy for c in self.items))

    def hard(self) -> "Constraints":
        """The constraints no plan may break: those of ``rebalance`` policies."""
        return Constraints(self.fleet, tuple(c for c in self.items if c.origin.hard))


def glob_regex(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One compiled regex for a list of globs; None means 'no filter'."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class _Matcher:
    """Selectors against one fleet, each distinct one matched once."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._devices: dict[tuple, tuple[str, ...]] = {}
        self._models: dict[tuple[str, ...], frozenset[str] | None] = {}

    def devices(self, selector: Selector) -> tuple[str, ...]:
        """The devices a selector's device, label and server parts match, in fleet order."""
        key = (selector.devices, tuple(sorted(selector.device_labels.items())), selector.servers)
        if key not in self._devices:
            names, servers = glob_regex(selector.devices), glob_regex(selector.servers)
            self._devices[key] = tuple(
                d.device.name for d in self.fleet.devices
                if (names is None or names.match(d.device.name))
                and all(d.device.labels.get(k) == v for k, v in selector.device_labels.items())
                and (servers is None or any(servers.match(s) for s in d.servers))
            )
        return self._devices[key]

    def models(self, patterns: tuple[str, ...]) -> frozenset[str] | None:
        """The fleet's models the globs match; None when there are no globs (every model)."""
        if patterns not in self._models:
            regex = glob_regex(patterns)
            self._models[patterns] = None if regex is None else frozenset(
                m for m in self.fleet.models if regex.match(m))
        return self._models[patterns]


NO_FLEET = Fleet((), ())  # for a reader of the patterns alone (the PromQL export): nothing matches


def compile_policies(policies: PolicySet, fleet: Fleet = NO_FLEET) -> Constraints:
    matcher = _Matcher(fleet)
    by_name = {d.device.name: d for d in fleet.devices}
    items: list[Constraint] = []
    for policy in policies.policies:
        items.append(_compile(policy, matcher, by_name))
    return Constraints(fleet, tuple(items))


def _origin(policy: Policy) -> Origin:
    scope = policy.selector
    if isinstance(policy, AntiAffinityPolicy):
        scope = Selector(scope.devices, scope.device_labels, scope.servers, policy.models)
    return Origin(policy.name, policy.where, policy.action, policy.severity, policy.for_seconds,
                  policy.runbook_url, scope)


def _compile(policy: Policy, matcher: _Matcher, by_name: Mapping[str, FleetDevice]) -> Constraint:
    origin = _origin(policy)
    scope = matcher.devices(policy.selector)
    if isinstance(policy, CapacityPolicy):
        return Capacity(
            origin, policy.resource, scope,
            tuple(_limit(policy, by_name[d].device) for d in scope),
            tuple(by_name[d].baseline.get(policy.resource, 0.0) for d in scope),
            matcher.models(policy.selector.models),
            None if policy.max_ratio is None else policy.max_ratio - policy.headroom_ratio, policy.max_bytes)
    if isinstance(policy, ModelLimitPolicy):
        return ModelLimit(origin, policy.resource, policy.max_value, frozenset(scope),
                          matcher.models(policy.selector.models))
    if isinstance(policy, FleetPolicy):
        return FleetMax(origin, policy.max_devices, frozenset(scope), matcher.models(policy.selector.models))
    if isinstance(policy, PinPolicy):
        return Allowed(origin, _some(matcher.models(policy.selector.models)), frozenset(matcher.devices(policy.to)),
                       frozenset(scope), policy.to)
    if isinstance(policy, AntiAffinityPolicy):
        return AntiAffinity(origin, _some(matcher.models(policy.models)), scope)
    if isinstance(policy, ThroughputPolicy):
        return _throughput(policy, origin, matcher, scope)
    assert isinstance(policy, ReplicasPolicy)
    return Replicas(origin, _some(matcher.models(policy.selector.models)), policy.count, frozenset(scope))


def _throughput(policy: ThroughputPolicy, origin: Origin, matcher: _Matcher, scope: tuple[str, ...]) -> Throughput:
    fleet = matcher.fleet
    selected = matcher.models(policy.selector.models)
    known = [m for m in (fleet.models if selected is None else sorted(selected))
             if m in fleet.demand_per_second and m in fleet.copy_capacity_per_second]
    needed = {m: fleet.demand_per_second[m] * (1 + policy.headroom_ratio) for m in known}
    return Throughput(
        origin, selected, frozenset(scope), policy.min_ratio, policy.max_ratio, policy.headroom_ratio,
        MappingProxyType({m: v * policy.min_ratio for m, v in needed.items()}),
        MappingProxyType({} if policy.max_ratio is None else {m: v * policy.max_ratio for m, v in needed.items()}),
        MappingProxyType({m: fleet.copy_capacity_per_second[m] for m in known}))


def _some(models: frozenset[str] | None) -> frozenset[str]:
    # Pins, anti-affinity and replicas always name their models (the loader insists).
    return models if models is not None else frozenset()


def _limit(policy: CapacityPolicy, device: Device) -> float:
    if policy.max_bytes is not None:
        return float(policy.max_bytes)
    assert policy.max_ratio is not None
    if policy.resource not in device.capacity and policy.resource.is_bytes:
        return math.nan
    return (policy.max_ratio - policy.headroom_ratio) * device.capacity_of(policy.resource)
