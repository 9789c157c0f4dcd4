"""The integer form of a placement problem that the heuristic, the bounds and CP-SAT all share.

Bytes stay whole bytes and ratios become parts per million, each rounded once here, so that every
algorithm agrees exactly on what fits. A device's ``capacity`` is its limit minus the server
baseline: the baseline is paid once per used device, so it never enters the per-model sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from gpupack.domain import ModelFootprint, Placement, Resource
from gpupack.scheduler.packing.problem import PlacementProblem

RATIO_SCALE = 1_000_000


def to_units(resource: Resource, value: float) -> int:
    return int(round(value if resource.is_bytes else value * RATIO_SCALE))


def from_units(resource: Resource, value: float) -> float:
    return float(value) if resource.is_bytes else value / RATIO_SCALE


@dataclass(frozen=True)
class Instance:
    problem: PlacementProblem
    resources: tuple[Resource | None, ...]  # per column: the constrained ones, then scoped limits' (None: a count)
    demand: np.ndarray  # [model, resource] int64
    capacity: np.ndarray  # [device, resource] int64: limit - baseline (negative: unusable)
    bounded: np.ndarray  # [device, resource] bool: False where the limit is infinite
    baseline: np.ndarray  # [resource] int64
    allowed: np.ndarray  # [model, device] bool: pins and "fits alone"
    replicas: np.ndarray  # [model] int
    cost: np.ndarray  # [device] float
    groups: tuple[np.ndarray, ...]  # anti-affinity groups as model indices
    current: frozenset[tuple[int, int]]  # (model, device) pairs of problem.current
    max_devices: int | None = None
    columns: tuple[str, ...] = ()  # per column: "" for a device's own limit, else the scoped limit's policy

    @property
    def n_models(self) -> int:
        return self.demand.shape[0]

    @property
    def n_devices(self) -> int:
        return self.capacity.shape[0]

    def device_classes(self) -> list[list[int]]:
        """Devices that are interchangeable: same capacity, cost and allowed models, not in use today."""
        classes: dict[tuple, list[int]] = {}
        used_today = {d for _, d in self.current}
        for d in range(self.n_devices):
            key = ("current", d) if d in used_today else (
                self.capacity[d].tobytes(), self.cost[d], self.allowed[:, d].tobytes()
            )
            classes.setdefault(key, []).append(d)
        return list(classes.values())

    def placement(self, assignment: Mapping[int, list[int]]) -> Placement:
        models, devices = self.problem.models, self.problem.devices
        return Placement({models[i].model: tuple(devices[d].name for d in ds) for i, ds in assignment.items()})


def compile_problem(problem: PlacementProblem) -> Instance:
    """Columns are the device-wide limits per resource, then one per scoped limit (only its models
    count there, and only its devices are limited); the solvers treat every column alike."""
    models, devices = problem.models, problem.devices
    model_index = {m.model: i for i, m in enumerate(models)}
    device_index = {d.name: j for j, d in enumerate(devices)}
    present = {r for m in models for r in m.peaks} | set(problem.server_baseline)
    resources = tuple(
        r for r in Resource if r in present and any(math.isfinite(problem.limit(d, r)) for d in devices)
    )
    scoped = problem.scoped_limits
    columns: list[Resource | None] = [*resources, *(s.resource for s in scoped)]
    demand = np.array(
        [[to_units(r, m.peak(r)) for r in resources] + [_units(s.resource, s.demand.get(m.model, 0.0)) for s in scoped]
         for m in models], dtype=np.int64
    ).reshape(len(models), len(columns))
    baseline = np.array([to_units(r, problem.server_baseline.get(r, 0.0)) for r in resources] + [0] * len(scoped),
                        dtype=np.int64)
    bounded = np.array(
        [[math.isfinite(problem.limit(d, r)) for r in resources] + [d.name in s.limits for s in scoped]
         for d in devices], dtype=bool
    ).reshape(len(devices), len(columns))
    unbounded = int(demand.sum()) + 1 if demand.size else 1

    def room(j: int, k: int) -> int:
        device = devices[j]
        if not bounded[j, k]:
            return unbounded
        if k < len(resources):
            r = resources[k]
            return to_units(r, problem.limit(device, r)) - to_units(r, problem.baseline(device.name, r))
        limit = scoped[k - len(resources)]
        return _units(limit.resource, limit.limits[device.name]) - _units(limit.resource, limit.baselines.get(device.name, 0.0))

    capacity = np.array(
        [[room(j, k) for k in range(len(columns))] for j in range(len(devices))], dtype=np.int64
    ).reshape(len(devices), len(columns))
    allowed = _fits_alone(demand, capacity)
    for model, names in problem.allowed_devices.items():
        if model in model_index:
            mask = np.zeros(len(devices), dtype=bool)
            mask[[device_index[n] for n in names if n in device_index]] = True
            allowed[model_index[model]] &= mask
    groups = tuple(
        np.array(sorted(model_index[m] for m in group if m in model_index))
        for group in problem.anti_affinity
    )
    current = frozenset(
        (model_index[m], device_index[d])
        for m, d in (problem.current.pairs() if problem.current else ())
        if m in model_index and d in device_index
    )
    return Instance(
        problem=problem,
        resources=tuple(columns),
        demand=demand,
        capacity=capacity,
        bounded=bounded,
        baseline=baseline,
        allowed=allowed,
        replicas=np.array([problem.replicas.get(m.model, 1) for m in models], dtype=np.int64),
        cost=np.array([d.cost for d in devices], dtype=float),
        groups=tuple(g for g in groups if len(g) > 1),
        current=current,
        max_devices=problem.max_devices,
        columns=tuple([""] * len(resources) + [s.name for s in scoped]),
    )


def _units(resource: Resource | None, value: float) -> int:
    """A count column (anti-affinity on some devices) is in whole models."""
    return int(round(value)) if resource is None else to_units(resource, value)


def _fits_alone(demand: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """[model, device]: the model alone fits the device. Computed once per distinct capacity,
    since a fleet of thousands of devices usually has only a few kinds."""
    kinds, kind_of = np.unique(capacity, axis=0, return_inverse=True)
    by_kind = np.all(demand[:, None, :] <= kinds[None, :, :], axis=2)
    return by_kind[:, kind_of.reshape(-1)]


def device_totals(problem: PlacementProblem, placement: Placement) -> dict[str, dict[Resource, float]]:
    """Per used device, in the problem's device order: baseline plus the peaks of its models."""
    by_name = {m.model: m for m in problem.models}
    hosted: dict[str, list[ModelFootprint]] = {}
    for model, devices in placement.assignments.items():
        for device in devices:
            hosted.setdefault(device, []).append(by_name[model])
    resources = [r for r in Resource if r in problem.server_baseline or any(r in m.peaks for m in problem.models)]
    return {
        d.name: {r: problem.baseline(d.name, r) + sum(m.peak(r) for m in hosted[d.name]) for r in resources}
        for d in problem.devices if d.name in hosted
    }
