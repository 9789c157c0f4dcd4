"""Plain-language reasons a placement problem has no answer, in the words of the policies behind it.

The problem carries the names of the policies each constraint came from (``constraint_sources``),
so the reasons name them without this module knowing what a policy is.
"""

from __future__ import annotations

import numpy as np

from gpupack.domain import Resource
from gpupack.scheduler.packing.instance import Instance, exact_demand, from_units
from gpupack.units import counted, format_bytes, format_percent


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
    limit, why = usable_devices, "available"
    if problem.max_devices is not None and problem.max_devices < limit:
        limit, why = problem.max_devices, f"allowed by {_policies(sources.get('max-devices'))}"
    if device_bound > limit:
        return f"the models need at least {counted(device_bound, 'device')}, but only {limit} {'is' if limit == 1 else 'are'} {why}"
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
    unit = int(instance.unit[r])
    need = _show(resource, exact_demand(instance, [i])[0, r] + instance.baseline[r] * unit)
    room = _show(resource, (instance.capacity[best, r] + instance.baseline[r]) * unit)
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
    if problem.forbidden_groups:
        groups = "; ".join(", ".join(sorted(g)) for g in problem.forbidden_groups)
        involved += f" (measured to break their budgets together, never on one device: {groups})"
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
