"""Policies -> placement constraints: the compiled policies as a problem the packing solvers answer.

Every resource the inputs measure is held to the device's capacity (100%) unless the caller
leaves it out of ``limited``: a device cannot run above 100% of anything, and a plan that says
otherwise overloads a GPU for whoever follows it. Policies only tighten. Memory is always limited
(beyond it a model does not load); leaving utilisation or bandwidth out is the article's case
study 1 (memory only), a trade of throughput for devices that a user asks for by name.
"""

from __future__ import annotations

import math
from typing import Collection, Iterable, Mapping

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.rules.compiled import (
    Allowed,
    AntiAffinity,
    Capacity,
    Constraint,
    Constraints,
    Fleet,
    FleetDevice,
    FleetMax,
    ModelLimit,
    Replicas,
    Throughput,
    compile_policies,
)
from gpupack.rules.policy import PolicySet
from gpupack.scheduler.packing.problem import InfeasibleError, PlacementProblem, ScopedLimit

# Held to each device's capacity unless a caller says otherwise: all of them.
ALL_RESOURCES = frozenset(Resource)


def fleet_for(
    models: Iterable[ModelFootprint],
    devices: Iterable[Device],
    server_baseline: Mapping[Resource, float],
    servers: Mapping[str, tuple[str, ...]] | None = None,
    device_baselines: Mapping[str, Mapping[Resource, float]] | None = None,
) -> Fleet:
    """The fleet policies are matched against when planning: each device with its servers and baseline."""
    servers, device_baselines = servers or {}, device_baselines or {}
    return Fleet(
        tuple(FleetDevice(d, tuple(servers.get(d.name, ())), device_baselines.get(d.name, server_baseline))
              for d in devices),
        tuple(m.model for m in models))


def build_problem(
    models: Iterable[ModelFootprint],
    devices: Iterable[Device],
    server_baseline: Mapping[Resource, float],
    policies: PolicySet | None = None,
    current: Placement | None = None,
    servers: Mapping[str, tuple[str, ...]] | None = None,
    device_baselines: Mapping[str, Mapping[Resource, float]] | None = None,
    limited: Collection[Resource] = ALL_RESOURCES,
) -> PlacementProblem:
    """Every policy as a hard constraint; see :func:`problem_from` to keep only some."""
    models, devices = tuple(models), tuple(devices)
    fleet = fleet_for(models, devices, server_baseline, servers, device_baselines)
    return problem_from(compile_policies(policies or PolicySet(), fleet), models, devices, server_baseline, current,
                        limited)


def problem_from(
    constraints: Constraints,
    models: Iterable[ModelFootprint],
    devices: Iterable[Device],
    server_baseline: Mapping[Resource, float],
    current: Placement | None = None,
    limited: Collection[Resource] = ALL_RESOURCES,
) -> PlacementProblem:
    """Compiled constraints -> a :class:`PlacementProblem` whose solutions they all judge ok.

    Every resource in ``limited`` (memory always) is held to each device's capacity; the others
    only to what a capacity policy says.

    A capacity constraint that counts every model becomes a per-device limit; one that counts
    some models becomes a scoped limit. A per-model limit keeps a model over it off the limit's
    devices. A fleet maximum scoped to some devices or models is applied to the whole fleet, and
    replicas scoped to some devices place all of a model's replicas there: both stricter than
    the evaluator, never looser.
    """
    rules = _Rules(tuple(models), tuple(devices), server_baseline, current, frozenset(limited) | {Resource.GPU_MEMORY})
    for c in constraints.items:
        rules.add(c)
    return rules.problem(constraints.fleet)


class _Rules:
    """The problem's rules as the constraints are read one by one, the tightest of each kind kept,
    with the policy behind each rule in ``sources`` (what an infeasibility explanation names)."""

    def __init__(self, models: tuple[ModelFootprint, ...], devices: tuple[Device, ...],
                 server_baseline: Mapping[Resource, float], current: Placement | None, limited: frozenset[Resource]):
        self.models, self.devices, self.server_baseline, self.current = models, devices, server_baseline, current
        self.everywhere = frozenset(d.name for d in devices)
        self.by_name = {d.name: d for d in devices}
        self.model_names = frozenset(m.model for m in models)
        self.peaks = {m.model: m for m in models}
        resources = {r for m in models for r in m.peaks} | set(server_baseline)
        # A resource absent from a device's limits is held to its capacity (PlacementProblem.limit).
        self.limits = {d.name: {r: math.inf for r in resources if r not in limited} for d in devices}
        self.sources: dict[str, str] = {}
        self.scoped: list[ScopedLimit] = []
        self.allowed: dict[str, frozenset[str]] = {}
        self.groups: list[frozenset[str]] = []
        self.replicas: dict[str, int] = {}
        self.max_devices: int | None = None

    def add(self, c: Constraint) -> None:
        if isinstance(c, Capacity):
            self._capacity(c)
        elif isinstance(c, ModelLimit):
            for model in self._models(c.models):
                if self.peaks[model].peak(c.resource) > c.max_value:
                    self._allow(model, self.everywhere - c.devices, c.origin.policy)
        elif isinstance(c, FleetMax):
            if self.max_devices is None or c.max_devices < self.max_devices:
                self.max_devices = c.max_devices
                self.sources["max-devices"] = c.origin.policy
        elif isinstance(c, Allowed):
            for model in self._models(c.models):
                self._allow(model, c.devices | (self.everywhere - c.scope), c.origin.policy)
        elif isinstance(c, AntiAffinity):
            self._anti_affinity(c)
        elif isinstance(c, Replicas):
            for model in self._models(c.models):
                self._at_least(model, c.count, c.origin.policy)
                if c.devices != self.everywhere:
                    self._allow(model, c.devices, c.origin.policy)
        elif isinstance(c, Throughput):
            for model in self._models(c.models):
                copies = _throughput_copies(c, model, self.current)
                if copies is not None:
                    self._at_least(model, copies, c.origin.policy)
                if copies is not None and c.devices != self.everywhere:
                    self._allow(model, c.devices, c.origin.policy)

    def problem(self, fleet: Fleet) -> PlacementProblem:
        baselines = {d.device.name: d.baseline for d in fleet.devices}
        return PlacementProblem(
            devices=self.devices,
            models=self.models,
            server_baseline=self.server_baseline,
            limits=self.limits,
            allowed_devices=self.allowed,
            anti_affinity=tuple(self.groups),
            replicas=self.replicas,
            max_devices=self.max_devices,
            current=self.current,
            constraint_sources=self.sources,
            scoped_limits=tuple(self.scoped),
            device_baselines={d: b for d, b in baselines.items() if d in self.everywhere},
        )

    def _capacity(self, c: Capacity) -> None:
        known = [(d, limit, base) for d, limit, base in zip(c.devices, c.limits, c.baselines) if limit == limit]
        if c.models is None or self.model_names <= c.models:
            for on, limit, _ in known:
                if limit < self._ceiling(on, c.resource):
                    self.limits[on][c.resource] = limit
                    self.sources[f"limit:{on}:{c.resource.value}"] = c.origin.policy
        elif c.models & self.model_names:
            demand = {m: self.peaks[m].peak(c.resource) for m in c.models & self.model_names}
            self.scoped.append(ScopedLimit(c.origin.policy, c.resource, demand, {d: limit for d, limit, _ in known},
                                           {d: base for d, _, base in known}))

    def _ceiling(self, device: str, resource: Resource) -> float:
        """The device's limit so far: a policy's, its capacity, or none. A policy above capacity
        (``max: 120%``) never raises it."""
        if resource in self.limits[device]:
            return self.limits[device][resource]
        try:
            return self.by_name[device].capacity_of(resource)
        except KeyError:  # memory of a device whose size is unknown
            return math.inf

    def _anti_affinity(self, c: AntiAffinity) -> None:
        group = c.models & self.model_names
        if len(group) > 1 and set(c.devices) == self.everywhere:
            self.sources[f"anti-affinity:{len(self.groups)}"] = c.origin.policy
            self.groups.append(group)
        elif len(group) > 1:
            self.scoped.append(ScopedLimit(c.origin.policy, None, {m: 1.0 for m in group}, {d: 1.0 for d in c.devices}))

    def _models(self, models: frozenset[str] | None) -> list[str]:
        """The constraint's models that are being placed (None: all of them), in name order."""
        return sorted(self.model_names if models is None else models & self.model_names)

    def _at_least(self, model: str, copies: int, policy: str) -> None:
        if copies > self.replicas.get(model, 1):
            self.replicas[model] = copies
            self.sources[f"replicas:{model}"] = policy

    def _allow(self, model: str, targets: frozenset[str], policy: str) -> None:
        self.allowed[model] = self.allowed.get(model, self.everywhere) & targets
        _add_source(self.sources, f"pin:{model}", policy)


def _throughput_copies(c: Throughput, model: str, current: Placement | None) -> int | None:
    """Today's copy count, raised to what demand needs and, with a ``max``, lowered to the most that
    stay within it: a plan adds copies when demand rises and consolidates only on the signal, the
    same bounds the evaluator judges. None when the model's demand or copy capacity is unknown."""
    needed = c.copies_needed(model)
    if needed is None:
        if model in c.required_per_second:
            raise InfeasibleError(f"model {model}: one copy serves nothing, so no number of copies meets its "
                                  f"demand ({c.origin.policy}, {c.origin.where})")
        return None
    now = len(current.assignments.get(model, ())) if current is not None else needed
    copies = max(now, needed)
    if model in c.over_per_second:
        most = math.floor(c.over_per_second[model] / c.copy_capacity_per_second[model] + 1e-9)
        copies = min(copies, max(most, needed))
    return copies


def _add_source(sources: dict[str, str], key: str, name: str) -> None:
    names = sources[key].split(", ") if key in sources else []
    if name not in names:
        sources[key] = ", ".join(names + [name])
