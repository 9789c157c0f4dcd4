"""Policies -> placement constraints, and plain-language reasons when they cannot all hold.

Memory is always limited by the device's capacity (beyond it a model does not load); utilisation
and bandwidth are limited only where a capacity policy says so, because going over 100% there
costs throughput, not correctness; that is the trade the article's case studies make by choice.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.rules.compiled import (
    Allowed,
    AntiAffinity,
    Capacity,
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
from gpupack.scheduler.instance import Instance, from_units
from gpupack.scheduler.problem import InfeasibleError, PlacementProblem, ScopedLimit
from gpupack.units import format_bytes, format_percent


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
) -> PlacementProblem:
    """Every policy as a hard constraint; see :func:`problem_from` to keep only some."""
    models, devices = tuple(models), tuple(devices)
    fleet = fleet_for(models, devices, server_baseline, servers, device_baselines)
    return problem_from(compile_policies(policies or PolicySet(), fleet), models, devices, server_baseline, current)


def problem_from(
    constraints: Constraints,
    models: Iterable[ModelFootprint],
    devices: Iterable[Device],
    server_baseline: Mapping[Resource, float],
    current: Placement | None = None,
) -> PlacementProblem:
    """Compiled constraints -> a :class:`PlacementProblem` whose solutions they all judge ok.

    A capacity constraint that counts every model becomes a per-device limit; one that counts
    some models becomes a scoped limit. A per-model limit keeps a model over it off the limit's
    devices. A fleet maximum scoped to some devices or models is applied to the whole fleet, and
    replicas scoped to some devices place all of a model's replicas there: both stricter than
    the evaluator, never looser.
    """
    models, devices = tuple(models), tuple(devices)
    names = [d.name for d in devices]
    everywhere = frozenset(names)
    model_names = frozenset(m.model for m in models)
    peaks = {m.model: m for m in models}
    baselines = {d.device.name: d.baseline for d in constraints.fleet.devices}
    sources: dict[str, str] = {}
    limits: dict[str, dict[Resource, float]] = {}
    resources = {r for m in models for r in m.peaks} | set(server_baseline)
    for device in devices:
        limits[device.name] = {r: math.inf for r in resources if not r.is_bytes}
    scoped: list[ScopedLimit] = []
    allowed: dict[str, frozenset[str]] = {}
    groups: list[frozenset[str]] = []
    replicas: dict[str, int] = {}
    max_devices = None

    def allow(model: str, targets: frozenset[str], policy: str) -> None:
        allowed[model] = allowed.get(model, everywhere) & targets
        _add_source(sources, f"pin:{model}", policy)

    for c in constraints.items:
        name = c.origin.policy
        if isinstance(c, Capacity):
            known = [(d, limit, base) for d, limit, base in zip(c.devices, c.limits, c.baselines) if limit == limit]
            if c.models is None or model_names <= c.models:
                for on, limit, _ in known:
                    if limit < limits[on].get(c.resource, math.inf):
                        limits[on][c.resource] = limit
                        sources[f"limit:{on}:{c.resource.value}"] = name
            elif c.models & model_names:
                scoped.append(ScopedLimit(name, c.resource, {m: peaks[m].peak(c.resource) for m in c.models & model_names},
                                          {d: limit for d, limit, _ in known}, {d: base for d, _, base in known}))
        elif isinstance(c, ModelLimit):
            for model in sorted(model_names if c.models is None else c.models & model_names):
                if peaks[model].peak(c.resource) > c.max_value:
                    allow(model, everywhere - c.devices, name)
        elif isinstance(c, FleetMax):
            if max_devices is None or c.max_devices < max_devices:
                max_devices = c.max_devices
                sources["max-devices"] = name
        elif isinstance(c, Allowed):
            for model in sorted(c.models & model_names):
                allow(model, c.devices | (everywhere - c.scope), name)
        elif isinstance(c, AntiAffinity):
            group = c.models & model_names
            if len(group) > 1 and set(c.devices) == everywhere:
                sources[f"anti-affinity:{len(groups)}"] = name
                groups.append(group)
            elif len(group) > 1:
                scoped.append(ScopedLimit(name, None, {m: 1.0 for m in group}, {d: 1.0 for d in c.devices}))
        elif isinstance(c, Replicas):
            for model in sorted(c.models & model_names):
                if c.count > replicas.get(model, 1):
                    replicas[model] = c.count
                    sources[f"replicas:{model}"] = name
                if c.devices != everywhere:
                    allow(model, c.devices, name)
        elif isinstance(c, Throughput):
            for model in sorted(model_names if c.models is None else c.models & model_names):
                copies = _throughput_copies(c, model, current)
                if copies is not None and copies > replicas.get(model, 1):
                    replicas[model] = copies
                    sources[f"replicas:{model}"] = name
                if copies is not None and c.devices != everywhere:
                    allow(model, c.devices, name)
    return PlacementProblem(
        devices=devices,
        models=models,
        server_baseline=server_baseline,
        limits=limits,
        allowed_devices=allowed,
        anti_affinity=tuple(groups),
        replicas=replicas,
        max_devices=max_devices,
        current=current,
        constraint_sources=sources,
        scoped_limits=tuple(scoped),
        device_baselines={d: b for d, b in baselines.items() if d in everywhere},
    )


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


def explain_infeasible(instance: Instance, device_bound: int) -> str | None:
    """A reason found without search: a model that fits nowhere, too few devices for the replicas,
    or fewer devices allowed than the lower bound. None when no such reason exists."""
    problem = instance.problem
    sources = problem.constraint_sources
    for i, model in enumerate(problem.models):
        pinned = problem.allowed_devices.get(model.model)
        if pinned is not None and not pinned:
            return f"model {model.model}: no device it may run on is left by {_policies(sources.get(f'pin:{model.model}'))}"
        if not instance.allowed[i].any():
            return _too_big(instance, i)
        usable = int(instance.allowed[i].sum())
        if instance.replicas[i] > usable:
            why = _policies(sources.get(f"replicas:{model.model}"))
            return f"model {model.model} needs {instance.replicas[i]} replicas on distinct devices ({why}) but fits on only {usable}"
    usable_devices = int(instance.allowed.any(axis=0).sum())
    limit, why = usable_devices, "devices available"
    if problem.max_devices is not None and problem.max_devices < limit:
        limit, why = problem.max_devices, f"allowed by {_policies(sources.get('max-devices'))}"
    if device_bound > limit:
        return f"the models need at least {device_bound} devices, but only {limit} are {why}"
    return None


def _too_big(instance: Instance, i: int) -> str:
    problem = instance.problem
    model = problem.models[i]
    candidates = np.arange(instance.n_devices)
    pinned = problem.allowed_devices.get(model.model)
    if pinned is not None:
        candidates = np.array([d for d, dev in enumerate(problem.devices) if dev.name in pinned], dtype=np.int64)
    over = instance.demand[i][None, :] > instance.capacity[candidates]
    r = int(np.argmax(over.sum(axis=0)))
    resource = instance.resources[r]
    best = candidates[np.argmax(instance.capacity[candidates, r])] if len(candidates) else 0
    need = _show(resource, instance.demand[i, r] + instance.baseline[r])
    room = _show(resource, instance.capacity[best, r] + instance.baseline[r])
    device = problem.devices[best].name
    scoped = instance.columns[r] if instance.columns else ""
    label = resource.value if resource is not None else "count"
    policy = f"policy {scoped}" if scoped else problem.constraint_sources.get(f"limit:{device}:{label}", "device capacity")
    where = f" of its pinned devices ({_policies(problem.constraint_sources.get(f'pin:{model.model}'))})" if pinned else ""
    return (
        f"model {model.model} needs {need} of {label} with the server baseline, "
        f"more than any{where} device allows: at most {room} on {device} ({policy})"
    )


def explain_unsolved(instance: Instance, proven: bool) -> str:
    problem = instance.problem
    policies = sorted({n for names in problem.constraint_sources.values() for n in names.split(", ")}
                      | {s.name for s in problem.scoped_limits})
    involved = f" (policies: {', '.join(policies)})" if policies else ""
    if proven:
        return f"no placement of the {instance.n_models} models satisfies all constraints together{involved}"
    return f"no placement found within the time limit that satisfies all constraints{involved}; allow more time"


def _policies(names: str | None) -> str:
    return f"policy {names}" if names and "," not in names else f"policies {names}" if names else "constraints"


def _show(resource: Resource | None, value_units: float) -> str:
    if resource is None:
        return f"{int(value_units)} models"
    value = from_units(resource, value_units)
    return format_bytes(value) if resource.is_bytes else format_percent(value)
