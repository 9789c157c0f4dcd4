"""Policies -> placement constraints, and plain-language reasons when they cannot all hold.

Memory is always limited by the device's capacity (beyond it a model does not load); utilisation
and bandwidth are limited only where a capacity policy says so, because going over 100% there
costs throughput, not correctness; that is the trade the article's case studies make by choice.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Iterable, Mapping

import numpy as np

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.rules.policy import (
    AntiAffinityPolicy,
    CapacityPolicy,
    FleetPolicy,
    PinPolicy,
    PolicySet,
    ReplicasPolicy,
)
from gpupack.scheduler.instance import Instance, from_units
from gpupack.scheduler.problem import PlacementProblem
from gpupack.units import format_bytes, format_percent


def build_problem(
    models: Iterable[ModelFootprint],
    devices: Iterable[Device],
    server_baseline: Mapping[Resource, float],
    policies: PolicySet | None = None,
    current: Placement | None = None,
) -> PlacementProblem:
    """Turn capacity, pin, anti-affinity, replica and fleet policies into a :class:`PlacementProblem`."""
    models, devices = tuple(models), tuple(devices)
    policies = policies or PolicySet()
    sources: dict[str, str] = {}
    limits: dict[str, dict[Resource, float]] = {}
    resources = {r for m in models for r in m.peaks} | set(server_baseline)
    for device in devices:
        device_limits = limits.setdefault(device.name, {})
        for resource in resources - {r for r in Resource if r.is_bytes}:
            device_limits[resource] = math.inf
        for policy in policies.of_type(CapacityPolicy):
            if not policy.selector.matches_device(device, device.labels.get("server")):
                continue
            limit = policy.limit_for(device)
            key = f"limit:{device.name}:{policy.resource.value}"
            if limit < device_limits.get(policy.resource, math.inf):
                device_limits[policy.resource] = limit
                sources[key] = policy.name
    allowed: dict[str, frozenset[str]] = {}
    for policy in policies.of_type(PinPolicy):
        targets = frozenset(d.name for d in devices if policy.to.matches_device(d, d.labels.get("server")))
        for model in models:
            if policy.selector.matches_model(model.model):
                allowed[model.model] = allowed.get(model.model, targets) & targets
                _add_source(sources, f"pin:{model.model}", policy.name)
    groups: list[frozenset[str]] = []
    for policy in policies.of_type(AntiAffinityPolicy):
        patterns = policy.models or policy.selector.models
        group = frozenset(m.model for m in models if any(fnmatch.fnmatchcase(m.model, p) for p in patterns))
        if len(group) > 1:
            sources[f"anti-affinity:{len(groups)}"] = policy.name
            groups.append(group)
    replicas: dict[str, int] = {}
    for policy in policies.of_type(ReplicasPolicy):
        for model in models:
            if policy.selector.matches_model(model.model) and policy.count > replicas.get(model.model, 1):
                replicas[model.model] = policy.count
                sources[f"replicas:{model.model}"] = policy.name
    max_devices = None
    for policy in policies.of_type(FleetPolicy):
        if max_devices is None or policy.max_devices < max_devices:
            max_devices = policy.max_devices
            sources["max-devices"] = policy.name
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
    )


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
            return f"model {model.model}: pins {_policies(sources.get(f'pin:{model.model}'))} leave no device it may run on"
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
    policy = problem.constraint_sources.get(f"limit:{device}:{resource.value}", "device capacity")
    where = f" of its pinned devices ({_policies(problem.constraint_sources.get(f'pin:{model.model}'))})" if pinned else ""
    return (
        f"model {model.model} needs {need} of {resource.value} with the server baseline, "
        f"more than any{where} device allows: at most {room} on {device} ({policy})"
    )


def explain_unsolved(instance: Instance, proven: bool) -> str:
    policies = sorted({n for names in instance.problem.constraint_sources.values() for n in names.split(", ")})
    involved = f" (policies: {', '.join(policies)})" if policies else ""
    if proven:
        return f"no placement of the {instance.n_models} models satisfies all constraints together{involved}"
    return f"no placement found within the time limit that satisfies all constraints{involved}; allow more time"


def _policies(names: str | None) -> str:
    return f"policy {names}" if names and "," not in names else f"policies {names}" if names else "constraints"


def _show(resource: Resource, value_units: float) -> str:
    value = from_units(resource, value_units)
    return format_bytes(value) if resource.is_bytes else format_percent(value)
