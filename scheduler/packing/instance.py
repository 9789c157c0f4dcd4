"""The integer form of a placement problem that the heuristic, the bounds and CP-SAT all share.

Bytes stay whole bytes and ratios become parts per million, each rounded once here; then each
column is expressed in the coarsest unit with the same packings (resolution.py), so that every
algorithm agrees exactly on what fits and none of them depends on the unit the sizes came in. A
device's ``capacity`` is its limit minus the server baseline: the baseline is paid once per used
device, so it never enters the per-model sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, cast

import numpy as np

from gpupack.domain import ModelFootprint, Placement, Resource
from gpupack.scheduler.packing.problem import PlacementProblem
from gpupack.scheduler.packing.resolution import column_units, scaled

RATIO_SCALE = 1_000_000


def to_units(resource: Resource, value: float) -> int:
    return int(round(value if resource.is_bytes else value * RATIO_SCALE))


def from_units(resource: Resource, value: float) -> float:
    return float(value) if resource.is_bytes else value / RATIO_SCALE


@dataclass(frozen=True)
class Instance:
    problem: PlacementProblem
    resources: tuple[Resource | None, ...]  # per column: the constrained ones, then scoped limits' (None: a count)
    demand: np.ndarray  # [model, resource] int64, in ``unit``s, rounded up
    capacity: np.ndarray  # [device, resource] int64, in ``unit``s (exact): limit - baseline (negative: unusable)
    bounded: np.ndarray  # [device, resource] bool: False where the limit is infinite
    baseline: np.ndarray  # [resource] int64, in ``unit``s (exact)
    unit: np.ndarray  # [resource] int64: base units (bytes, millionths, models) per unit
    allowed: np.ndarray  # [model, device] bool: pins and "fits alone"
    replicas: np.ndarray  # [model] int
    cost: np.ndarray  # [device] float
    groups: tuple[np.ndarray, ...]  # anti-affinity groups as model indices
    current: frozenset[tuple[int, int]]  # (model, device) pairs of problem.current
    max_devices: int | None = None
    columns: tuple[str, ...] = ()  # per column: "" for a device's own limit, else the scoped limit's policy
    forbidden: tuple[np.ndarray, ...] = ()  # forbidden groups as model indices: never all on one device

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
    exact_sizes = _exact_demand(problem, resources, range(len(models)))
    baseline = np.array([to_units(r, problem.server_baseline.get(r, 0.0)) for r in resources] + [0] * len(scoped),
                        dtype=np.int64)
    bounded = np.array(
        [[math.isfinite(problem.limit(d, r)) for r in resources] + [d.name in s.limits for s in scoped]
         for d in devices], dtype=bool
    ).reshape(len(devices), len(columns))

    def room(j: int, k: int) -> int:
        device = devices[j]
        if not bounded[j, k]:
            return 0  # replaced below, once the unit is known
        if k < len(resources):
            r = resources[k]
            return to_units(r, problem.limit(device, r)) - to_units(r, problem.baseline(device.name, r))
        limit = scoped[k - len(resources)]
        return _units(limit.resource, limit.limits[device.name]) - _units(limit.resource, limit.baselines.get(device.name, 0.0))

    exact_rooms = np.array(
        [[room(j, k) for k in range(len(columns))] for j in range(len(devices))], dtype=np.int64
    ).reshape(len(devices), len(columns))
    unit = column_units(exact_sizes, exact_rooms, bounded, baseline)
    demand = scaled(exact_sizes, unit)
    capacity = np.where(bounded, exact_rooms // unit, int(demand.sum()) + 1)
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
    # A group with a model outside this problem can never be whole on a device: it binds nothing.
    forbidden = tuple(
        np.array(sorted(model_index[m] for m in group))
        for group in problem.forbidden_groups if all(m in model_index for m in group)
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
        baseline=baseline // unit,
        unit=unit,
        allowed=allowed,
        replicas=np.array([problem.replicas.get(m.model, 1) for m in models], dtype=np.int64),
        cost=np.array([d.cost for d in devices], dtype=float),
        groups=tuple(g for g in groups if len(g) > 1),
        current=current,
        max_devices=problem.max_devices,
        columns=tuple([""] * len(resources) + [s.name for s in scoped]),
        forbidden=forbidden,
    )


def exact_demand(instance: Instance, models: Sequence[int]) -> np.ndarray:
    """[model, column] in base units, unrounded: what the final check and the messages use."""
    resources = instance.resources[: len(instance.resources) - len(instance.problem.scoped_limits)]
    return _exact_demand(instance.problem, cast("tuple[Resource, ...]", resources), models)


def overfilled(instance: Instance, assignment: Mapping[int, list[int]]) -> list[str]:
    """Devices whose models exceed a limit, counted in exact base units rather than the solving
    units: the check that the unit chosen for solving kept every answer exact."""
    loads = np.zeros_like(instance.capacity)
    models = sorted(assignment)
    demand = exact_demand(instance, models)
    for row, i in enumerate(models):
        for d in assignment[i]:
            loads[d] += demand[row]
    over = instance.bounded & (loads > instance.capacity * instance.unit)
    return [instance.problem.devices[d].name for d in np.flatnonzero(over.any(axis=1))]


def together(instance: Instance, assignment: Mapping[int, list[int]]) -> list[str]:
    """Devices that hold every model of a forbidden group: the final check that no solver path
    put a group measured to break its budgets back together."""
    names = []
    for group in instance.forbidden:
        shared = set.intersection(*(set(assignment.get(int(i), ())) for i in group))
        names += [instance.problem.devices[d].name for d in sorted(shared)]
    return sorted(set(names))


def _exact_demand(problem: PlacementProblem, resources: Sequence[Resource], models: Iterable[int]) -> np.ndarray:
    scoped = problem.scoped_limits
    rows = [[to_units(r, m.peak(r)) for r in resources]
            + [_units(s.resource, s.demand.get(m.model, 0.0)) for s in scoped]
            for m in (problem.models[i] for i in models)]
    return np.array(rows, dtype=np.int64).reshape(len(rows), len(resources) + len(scoped))


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
