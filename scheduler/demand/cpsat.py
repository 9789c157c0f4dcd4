"""The joint demand model in CP-SAT: which option (configuration, copy count) each model takes,
and which devices its copies go on, decided together.

``z[o]`` chooses option ``o``; ``x[o, d]`` puts one copy of it on device ``d``. A chosen option
places exactly its copies, one per device; an unchosen one places none. Devices are the options'
integer :class:`Instance` (limits minus the server baseline, pins, "fits alone"), so CP-SAT agrees
exactly with the heuristics on what fits.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

from ortools.sat.python import cp_model

from gpupack import timing
from gpupack.scheduler.packing.instance import Instance
from gpupack.scheduler.packing.problem import Objective

COST_SCALE = 1000
Choice = dict[int, tuple[int, list[int]]]  # model index -> (option index, device indices)


@dataclass(frozen=True)
class JointOutcome:
    choice: Choice | None  # None: nothing found in time
    proven: bool  # the objective is proven optimal
    device_bound: int  # CP-SAT's bound on devices (0 unless devices come first)


def solve_joint(
    options: Instance,
    option_model: Sequence[int],
    groups: Sequence[Sequence[int]],
    objective: Objective,
    time_limit_seconds: float,
    hint: Choice,
    forbidden: Sequence[Sequence[int]] = (),
    workers: int = min(8, os.cpu_count() or 1),
) -> JointOutcome:
    """``groups``: anti-affinity as model indices; ``forbidden``: groups of models (indices) never all
    on one device. The hint bounds how many devices of each kind are offered. Building the model
    counts against ``time_limit_seconds`` (seconds on a thousand options)."""
    started = timing.clock()
    model = cp_model.CpModel()
    devices = _offered(options, hint, objective)
    y = {d: model.NewBoolVar(f"y{d}") for d in devices}
    z = [model.NewBoolVar(f"z{o}") for o in range(options.n_models)]
    x: dict[tuple[int, int], cp_model.IntVar] = {}
    by_device: dict[int, list[tuple[int, cp_model.IntVar]]] = {d: [] for d in devices}
    for o in range(options.n_models):
        for d in devices:
            if options.allowed[o, d]:
                x[o, d] = model.NewBoolVar(f"x{o}_{d}")
                by_device[d].append((o, x[o, d]))
                model.AddImplication(x[o, d], z[o])
                model.AddImplication(x[o, d], y[d])
        placed = [x[o, d] for d in devices if (o, d) in x]
        model.Add(sum(placed) == int(options.replicas[o]) * z[o])
    by_model: dict[int, list[int]] = {}
    for o, m in enumerate(option_model):
        by_model.setdefault(m, []).append(o)
    for members in by_model.values():
        model.AddExactlyOne(z[o] for o in members)
    for d in devices:
        here = by_device[d]
        for r in range(len(options.resources)):
            if sum(int(options.demand[o, r]) for o, _ in here) > options.capacity[d, r]:
                model.Add(sum(int(options.demand[o, r]) * v for o, v in here) <= int(options.capacity[d, r]) * y[d])
        for group in groups:
            in_group = [x[o, d] for m in group for o in by_model.get(m, []) if (o, d) in x]
            if len(in_group) > 1:
                model.AddAtMostOne(in_group)
        for group in forbidden:  # a no-good cut: a model's copies sit on distinct devices, so each counts once
            present = [[x[o, d] for o in by_model.get(m, []) if (o, d) in x] for m in group]
            if all(present):
                model.Add(sum(v for vs in present for v in vs) <= len(group) - 1)
    for device_class in options.device_classes():
        offered = [d for d in device_class if d in y]
        for a, b in zip(offered, offered[1:]):
            model.AddImplication(y[b], y[a])
    if options.max_devices is not None:
        model.Add(sum(y.values()) <= options.max_devices)
    if objective is Objective.MIN_COST:
        model.Minimize(sum(int(round(options.cost[d] * COST_SCALE)) * v for d, v in y.items()))
    else:
        model.Minimize(sum(y.values()))
    _hint(model, _relabel(options, hint, devices), x, y, z)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = workers
    solver.parameters.max_time_in_seconds = max(0.1, time_limit_seconds - (timing.clock() - started))
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return JointOutcome(None, False, 0)
    choice: Choice = {}
    for o, m in enumerate(option_model):
        if solver.BooleanValue(z[o]):
            choice[m] = (o, [d for d in devices if (o, d) in x and solver.BooleanValue(x[o, d])])
    bound = math.ceil(solver.BestObjectiveBound() - 1e-6) if objective is Objective.MIN_DEVICES else 0
    return JointOutcome(choice, status == cp_model.OPTIMAL, bound)


def _offered(options: Instance, hint: Choice, objective: Objective) -> list[int]:
    """No better plan needs more devices of a kind than the hint uses in all (or can pay for)."""
    used = {d for _, ds in hint.values() for d in ds}
    offered: list[int] = []
    for device_class in options.device_classes():
        if objective is Objective.MIN_COST:
            keep = int(sum(options.cost[d] for d in used) // max(options.cost[device_class[0]], 1e-9))
        else:
            keep = len(used)
        offered += device_class[:keep]
    return sorted(offered)


def _relabel(options: Instance, hint: Choice, devices: list[int]) -> Choice:
    """Move the hint onto the first devices of each class, as the symmetry breaking demands."""
    mapping: dict[int, int] = {}
    used = sorted({d for _, ds in hint.values() for d in ds})
    offered = set(devices)
    for device_class in options.device_classes():
        members = [d for d in used if d in set(device_class)]
        mapping.update(zip(members, [d for d in device_class if d in offered]))
    return {m: (o, [mapping.get(d, d) for d in ds]) for m, (o, ds) in hint.items()}


def _hint(model: cp_model.CpModel, hint: Choice, x: dict, y: dict, z: list) -> None:
    chosen = {o for o, _ in hint.values()}
    pairs = {(o, d) for o, ds in hint.values() for d in ds}
    for o, var in enumerate(z):
        model.AddHint(var, o in chosen)
    for key, var in x.items():
        model.AddHint(var, key in pairs)
    used = {d for _, d in pairs}
    for d, var in y.items():
        model.AddHint(var, d in used)
