"""The exact placement model in OR-Tools CP-SAT, solved one objective after another.

Devices that are interchangeable (same limits, cost and allowed models, not in use today) are
ordered so that CP-SAT never explores relabelings of the same packing; when every device is alike
and every model has one replica, the k-th largest model may only use the first k devices.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ortools.sat.python import cp_model

from gpupack.scheduler.packing.heuristic import Assignment, relative_sizes
from gpupack.scheduler.packing.instance import Instance
from gpupack.scheduler.packing.problem import Objective
from gpupack.timing import Deadline

BALANCE_STEPS = 1000  # headroom is optimised to 0.1% of each limit
COST_SCALE = 1000


@dataclass(frozen=True)
class CpSatOutcome:
    assignment: Assignment | None  # None: no solution found (infeasible, or out of time)
    infeasible: bool  # proven: no placement exists
    proven: bool  # every objective proven optimal
    device_bound: int  # CP-SAT's own lower bound on devices (0 unless minimising devices first)


class _Model:
    def __init__(self, instance: Instance, devices: list[int], ranked: np.ndarray, break_by_rank: bool):
        self.instance, self.devices = instance, devices
        self.model = cp_model.CpModel()
        model, inst = self.model, instance
        rank = np.empty(inst.n_models, dtype=np.int64)
        rank[ranked] = np.arange(inst.n_models)
        self.y = {d: model.NewBoolVar(f"y{d}") for d in devices}
        self.x: dict[tuple[int, int], cp_model.IntVar] = {}
        for i in range(inst.n_models):
            for k, d in enumerate(devices):
                if inst.allowed[i, d] and (not break_by_rank or k <= rank[i]):
                    self.x[i, d] = model.NewBoolVar(f"x{i}_{d}")
        by_model: dict[int, list] = {}
        by_device: dict[int, list[tuple[int, cp_model.IntVar]]] = {d: [] for d in devices}
        for (i, d), var in self.x.items():
            by_model.setdefault(i, []).append(var)
            by_device[d].append((i, var))
            model.AddImplication(var, self.y[d])
        for i in range(inst.n_models):
            model.Add(sum(by_model.get(i, [])) == int(inst.replicas[i]))
        for d in devices:
            members = by_device[d]
            for r in range(len(inst.resources)):
                if sum(int(inst.demand[i, r]) for i, _ in members) > inst.capacity[d, r]:
                    model.Add(sum(int(inst.demand[i, r]) * v for i, v in members) <= int(inst.capacity[d, r]) * self.y[d])
            for group in inst.groups:
                in_group = [self.x[i, d] for i in group if (i, d) in self.x]
                if len(in_group) > 1:
                    model.AddAtMostOne(in_group)
            for group in inst.forbidden:  # a no-good cut: never the whole group on one device
                present = [self.x[i, d] for i in group if (i, d) in self.x]
                if len(present) == len(group):
                    model.Add(sum(present) <= len(group) - 1)
        if inst.max_devices is not None:
            model.Add(sum(self.y.values()) <= inst.max_devices)

    def order_within(self, device_class: list[int]) -> None:
        for a, b in zip(device_class, device_class[1:]):
            self.model.AddImplication(self.y[b], self.y[a])

    def expression(self, objective: Objective) -> cp_model.LinearExprT:
        inst = self.instance
        if objective is Objective.MIN_DEVICES:
            return sum(self.y.values())
        if objective is Objective.MIN_COST:
            return sum(int(round(inst.cost[d] * COST_SCALE)) * y for d, y in self.y.items())
        if objective is Objective.MIN_MOVES:
            return sum(v for key, v in self.x.items() if key not in inst.current)
        fullest = self.model.NewIntVar(0, BALANCE_STEPS, "fullest")
        for d in self.devices:
            members = [(i, v) for (i, e), v in self.x.items() if e == d]
            for r in np.flatnonzero(inst.bounded[d]):
                limit = int(inst.capacity[d, r] + inst.baseline[r])
                used = sum(int(inst.demand[i, r]) * v for i, v in members) + int(inst.baseline[r]) * self.y[d]
                self.model.Add(BALANCE_STEPS * used <= limit * fullest)
        return fullest

    def hint(self, assignment: Assignment) -> None:
        self.model.ClearHints()
        chosen = {(i, d) for i, ds in assignment.items() for d in ds}
        for key, var in self.x.items():
            self.model.AddHint(var, key in chosen)
        used = {d for _, d in chosen}
        for d, var in self.y.items():
            self.model.AddHint(var, d in used)

    def read(self, solver: cp_model.CpSolver) -> Assignment:
        assignment: Assignment = {i: [] for i in range(self.instance.n_models)}
        for (i, d), var in self.x.items():
            if solver.BooleanValue(var):
                assignment[i].append(d)
        return assignment


# Fleets up to this many models are searched deterministically.
DETERMINISTIC_MODELS = 64


def solve_exact(
    instance: Instance,
    objectives: Sequence[Objective],
    time_limit_seconds: float,
    hint: Assignment | None,
    workers: int = min(8, os.cpu_count() or 1),
) -> CpSatOutcome:
    """Optimise ``objectives`` in order, fixing each optimum (or best found) before the next."""
    deadline = Deadline.after(time_limit_seconds)
    ranked = np.lexsort((-relative_sizes(instance).sum(axis=1), -relative_sizes(instance).max(axis=1)))
    full_classes = instance.device_classes()
    if hint is not None:
        hint = _relabel(hint, full_classes, ranked)
    classes = [c for c in (_trim(instance, c, hint, objectives[0]) for c in full_classes) if c]
    break_by_rank = len(classes) == 1 and not instance.current and bool((instance.replicas == 1).all())
    devices = sorted(d for c in classes for d in c)
    if break_by_rank:
        devices = classes[0]
    built = _Model(instance, devices, ranked, break_by_rank)
    for device_class in classes:
        built.order_within(device_class)
    if hint is not None:
        built.hint(hint)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = workers
    # A small fleet is solved to optimality in milliseconds, often with several optimal placements:
    # the interleaved search returns the same one every time (a parallel search returned whichever
    # worker finished first, which changed with the machine's load).
    solver.parameters.interleave_search = instance.n_models <= DETERMINISTIC_MODELS
    assignment, proven, device_bound = None, True, 0
    for phase, objective in enumerate(objectives):
        expression = built.expression(objective)
        built.model.Minimize(expression)
        solver.parameters.max_time_in_seconds = max(0.05, deadline.remaining() / (len(objectives) - phase))
        status = solver.Solve(built.model)
        if status == cp_model.INFEASIBLE and phase == 0:
            return CpSatOutcome(None, True, False, 0)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            proven = False
            break
        proven &= status == cp_model.OPTIMAL
        if phase == 0 and objective is Objective.MIN_DEVICES:
            device_bound = math.ceil(solver.BestObjectiveBound() - 1e-6)
        assignment = built.read(solver)
        built.model.Add(expression <= int(round(solver.ObjectiveValue())))
        built.hint(assignment)
    return CpSatOutcome(assignment, False, proven and assignment is not None, device_bound)


def _trim(instance: Instance, device_class: list[int], hint: Assignment | None, primary: Objective) -> list[int]:
    """When devices (or cost) come first, no solution needs more of a class than the hint's whole
    count; under a fleet-size limit, none needs more than the limit of interchangeable devices."""
    if instance.max_devices is not None:
        device_class = device_class[: instance.max_devices]
    if hint is None or primary not in (Objective.MIN_DEVICES, Objective.MIN_COST):
        return device_class
    used = {d for ds in hint.values() for d in ds}
    if primary is Objective.MIN_DEVICES:
        keep = len(used)
    else:
        keep = int(sum(instance.cost[d] for d in used) // max(instance.cost[device_class[0]], 1e-9))
    return device_class[: max(keep, 0)]


def _relabel(hint: Assignment, classes: list[list[int]], ranked: np.ndarray) -> Assignment:
    """Move the hint's devices within each class to the first ones, in order of their largest model,
    so that it satisfies the symmetry-breaking constraints."""
    rank = np.empty(len(ranked), dtype=np.int64)
    rank[ranked] = np.arange(len(ranked))
    first_rank: dict[int, int] = {}
    for i, ds in hint.items():
        for d in ds:
            first_rank[d] = min(first_rank.get(d, len(ranked)), int(rank[i]))
    mapping: dict[int, int] = {}
    for device_class in classes:
        members = set(device_class)
        used = sorted((d for d in first_rank if d in members), key=first_rank.__getitem__)
        mapping.update(zip(used, device_class))
    return {i: [mapping.get(d, d) for d in ds] for i, ds in hint.items()}
