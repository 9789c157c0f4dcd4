"""From today's placement to the target one, in an order that never overloads a device.

A move loads the model on its new device and only unloads it from the old one once the new copy
is ready, so while a step runs *both* copies count. A step is safe when its target device stays
within every limit with the newcomer on it (sources only ever shrink). Steps run one at a time.

Arriving on a device that nobody still has to leave can never block anything (its contents stay a
subset of its target contents, which fit), so those steps are taken greedily; only arrivals on
devices that others must leave first need a search. When no safe order exists, the plan says
which steps are stuck and proposes the smallest relaxation found: one temporary move through a
device with room, or else the smallest raise of one device's limit.

A step may also load its copy in another configuration (instance count, batching): on a new
device, or in place, where Triton keeps the old configuration serving until the new one is
ready, so the device holds both configurations' peaks while it switches, as it does in a move.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from gpupack.domain import Placement, Resource
from gpupack.scheduler.packing.problem import Dimension
from gpupack.scheduler.rebalance.steps import TOLERANCE, Budget, Step
from gpupack.units import format_bytes, format_percent

_SEARCH_NODES = 20_000


@dataclass(frozen=True)
class Relaxation:
    """The smallest change found that makes a safe order exist, and that order."""

    description: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class MovePlan:
    steps: tuple[Step, ...]  # a safe order; empty when there is nothing to do or no safe order
    safe: bool
    blocked: tuple[Step, ...] = ()  # steps no safe order could reach
    reason: str = ""
    relaxation: Relaxation | None = None


class _State:
    """Which device holds which models and what that costs, updated step by step."""

    def __init__(self, placement: Placement, budget: Budget) -> None:
        self.budget = budget
        self.contents: dict[str, set[str]] = {}
        for model, device in placement.pairs():
            self.contents.setdefault(device, set()).add(model)
        self.configs: dict[tuple[str, str], str | None] = dict(budget.loaded_configs)  # (model, device) -> config
        self._undo: list[dict[tuple[str, str], str | None]] = []  # the configurations each applied step replaced
        self.used = {device: self._usage(device) for device in self.contents}

    def models_on(self, device: str) -> set[str]:
        return self.contents.get(device, set())

    def _usage(self, device: str) -> dict[Dimension, float]:
        used: dict[Dimension, float] = dict(self.budget.server_baseline) if self.models_on(device) else {}
        for model in self.models_on(device):
            for resource, value in self.budget.copy_peaks(model, self.configs.get((model, device))).items():
                used[resource] = used.get(resource, 0.0) + value
        return used

    def usage_with(self, device: str, model: str, config: str | None = None) -> dict[Dimension, float]:
        """The device's usage once ``model`` has arrived in ``config`` (and before anything leaves,
        an old configuration of it included)."""
        used = dict(self.used.get(device, {}))
        if not self.models_on(device):
            used = dict(self.budget.server_baseline)
        for resource, value in self.budget.copy_peaks(model, config).items():
            used[resource] = used.get(resource, 0.0) + value
        return used

    def _set(self, device: str, model: str, config: str | None) -> None:
        self.contents.setdefault(device, set()).add(model)
        self.configs[(model, device)] = config
        # Recomputed, not adjusted: no drift over a long search.
        self.used[device] = self._usage(device)

    def _remove(self, device: str, model: str) -> None:
        self.contents[device].discard(model)
        self.configs.pop((model, device), None)
        self.used[device] = self._usage(device)

    def apply(self, step: Step) -> None:
        touched = {(step.model, d) for d in (step.source, step.target) if d is not None}
        self._undo.append({key: self.configs.get(key) for key in touched})
        if step.source is not None:
            self._remove(step.source, step.model)
        if step.target is not None:
            self._set(step.target, step.model, step.config)

    def undo(self, step: Step) -> None:
        replaced = self._undo.pop()
        if step.target is not None:
            self._remove(step.target, step.model)
        if step.source is not None:
            self._set(step.source, step.model, replaced[(step.model, step.source)])


def _capacity(state: _State, model: str) -> float:
    capacities = state.budget.config_capacity_per_second.get(model, {})
    return sum(capacities.get(state.configs.get((model, device)) or "", 0.0)
               for device, models in state.contents.items() if model in models)


def _capacity_problem(state: _State, step: Step) -> str | None:
    """A step that lowers a model's capacity may not leave it below what the copies must serve."""
    required = state.budget.required_per_second.get(step.model)
    if required is None or step.kind == "load":
        return None
    before = _capacity(state, step.model)
    state.apply(step)
    after = _capacity(state, step.model)
    state.undo(step)
    if after < before and after < required * (1 - TOLERANCE):
        return f"{step.describe()} would leave {step.model} serving {after:g}/s of the {required:g}/s it must"
    return None


def _problem(state: _State, step: Step) -> str | None:
    """Why ``step`` cannot run now, or None when it is safe."""
    if step.source is not None and step.model not in state.models_on(step.source):
        return f"{step.model} is not on {step.source}"
    if (capacity := _capacity_problem(state, step)) is not None:
        return capacity
    if step.target is None:
        copies = sum(step.model in models for models in state.contents.values())
        needed = state.budget.min_copies.get(step.model, 0)
        if copies - 1 < needed:
            return f"unloading {step.model} would leave {copies - 1} of the {needed} copies its demand needs"
        return None
    if step.model in state.models_on(step.target) and step.kind != "reconfigure":
        return f"{step.model} is already on {step.target}"
    over = state.budget.excess(step.target, state.usage_with(step.target, step.model, step.config))
    if over:
        return f"{step.target} would exceed its {', '.join(sorted(r.value for r in over))} limit"
    return None


def check_order(current: Placement, steps: Sequence[Step], budget: Budget) -> str | None:
    """The first unsafe step of an order and why, or None when every step is safe."""
    state = _State(current, budget)
    for index, step in enumerate(steps):
        problem = _problem(state, step)
        if problem is not None:
            return f"step {index + 1} ({step.describe()}): {problem}"
        state.apply(step)
    return None


def diff_steps(
    current: Placement,
    target: Placement,
    loaded_configs: Mapping[tuple[str, str], str] | None = None,
    target_configs: Mapping[str, str] | None = None,
) -> list[Step]:
    """Unordered steps turning ``current`` into ``target``; models absent from the target stay put.

    With ``target_configs`` (model -> configuration), arriving copies load in it and a copy that
    stays where it is but runs another configuration today (``loaded_configs``) is reloaded.
    """
    loaded_configs, target_configs = loaded_configs or {}, target_configs or {}
    steps: list[Step] = []
    for model in sorted(target.assignments):
        now = set(current.assignments.get(model, ()))
        wanted = set(target.assignments[model])
        leaving, arriving = sorted(now - wanted), sorted(wanted - now)
        config = target_configs.get(model)
        for source, destination in zip(leaving, arriving):
            steps.append(Step(model, source, destination, config=config))
        steps.extend(Step(model, source, None) for source in leaving[len(arriving):])
        steps.extend(Step(model, None, destination, config=config) for destination in arriving[len(leaving):])
        if config is not None:
            steps.extend(Step(model, device, device, config=config) for device in sorted(now & wanted)
                         if loaded_configs.get((model, device)) != config)
    return steps


class _Search:
    """Depth-first search for a safe order, remembering dead ends and the deepest state reached.

    Iterative, because an order is as deep as the plan is long (thousands of steps).
    """

    def __init__(self, current: Placement, steps: Sequence[Step], budget: Budget) -> None:
        self.state, self.steps = _State(current, budget), list(steps)
        self.dead_ends: set[frozenset[int]] = set()
        # The furthest the search got, and the devices' contents there: where a relaxation must help.
        self.deepest: tuple[list[int], dict[str, set[str]]] = ([], self._contents())

    def _contents(self) -> dict[str, set[str]]:
        return {device: set(models) for device, models in self.state.contents.items()}

    def run(self) -> list[Step] | None:
        order: list[int] = []
        stack = [(frozenset[int](), self._candidates(frozenset()))]
        nodes = 0
        while stack:
            done, candidates = stack[-1]
            if len(done) == len(self.steps):
                return [self.steps[i] for i in order]
            if not candidates or nodes >= _SEARCH_NODES:
                self.dead_ends.add(done)
                stack.pop()
                if order:
                    self.state.undo(self.steps[order.pop()])
                continue
            index = candidates.pop(0)
            reached = done | {index}
            if reached in self.dead_ends:
                continue
            nodes += 1
            self.state.apply(self.steps[index])
            order.append(index)
            if len(order) > len(self.deepest[0]):
                self.deepest = (list(order), self._contents())
            stack.append((reached, self._candidates(reached)))
        return None

    def _candidates(self, done: frozenset[int]) -> list[int]:
        pending = [i for i in range(len(self.steps)) if i not in done]
        departures = {self.steps[i].source for i in pending}
        # Leaving, or arriving where nobody has to leave, never blocks another step: no branching.
        for index in pending:
            step = self.steps[index]
            if (step.target is None or step.target not in departures) and _problem(self.state, step) is None:
                return [index]
        ready = [i for i in pending if _problem(self.state, self.steps[i]) is None]
        needed = {self.steps[i].target for i in pending if i not in ready}
        peaks = self.state.budget.peaks

        def preference(index: int) -> tuple:
            step = self.steps[index]
            return (step.source not in needed, -sum(peaks.get(step.model, {}).values()), index)

        return sorted(ready, key=preference)


def plan_moves(
    current: Placement, target: Placement, budget: Budget, target_configs: Mapping[str, str] | None = None
) -> MovePlan:
    """An ordered, safe list of steps from ``current`` to ``target`` (its copies in
    ``target_configs``, from the ``budget``'s loaded ones), or why none exists."""
    steps = diff_steps(current, target, budget.loaded_configs, target_configs)
    if not steps:
        return MovePlan((), True, reason="the placement already matches the target")
    search = _Search(current, steps, budget)
    order = search.run()
    if order is not None:
        return MovePlan(tuple(order), True)
    done = set(search.deepest[0])
    blocked = tuple(step for index, step in enumerate(steps) if index not in done)
    relaxation = _temporary_move(current, steps, budget, blocked) or _limit_raise(
        current, steps, budget, blocked, search.deepest[1]
    )
    names = ", ".join(step.describe() for step in blocked)
    return MovePlan((), False, blocked, f"no order keeps every device within its limits: {names}", relaxation)


def _temporary_move(
    current: Placement, steps: list[Step], budget: Budget, blocked: Sequence[Step]
) -> Relaxation | None:
    """Route one stuck move through a third device, preferring empty ones, then the roomiest."""
    occupied = {device for _, device in current.pairs()} | {s.target for s in steps if s.target}

    def roominess(device: str) -> tuple:
        limit = budget.limits.get(device, {}).get(Resource.GPU_MEMORY, 0.0)
        used = budget.usage(current.models_on(device)).get(Resource.GPU_MEMORY, 0.0)
        return (device in occupied, -(limit - used), device)

    spares = sorted(budget.limits, key=roominess)
    for stuck in blocked:
        if stuck.kind != "move":
            continue
        for spare in spares:
            if spare in (stuck.source, stuck.target):
                continue
            rerouted = [s for s in steps if s != stuck] + [
                Step(stuck.model, stuck.source, spare, temporary=True, config=stuck.config),
                Step(stuck.model, spare, stuck.target, config=stuck.config),
            ]
            order = _Search(current, rerouted, budget).run()
            if order is not None:
                return Relaxation(
                    f"move {stuck.model} to {spare} first, temporarily, then on to {stuck.target}", tuple(order)
                )
    return None


def _usage_with(budget: Budget, step: Step, contents: set[str]) -> dict[Dimension, float]:
    """The target's usage with ``step``'s copy arrived, the copies there in today's configurations."""
    assert step.target is not None
    totals: dict[Dimension, float] = dict(budget.server_baseline)
    copies = [(m, budget.loaded_configs.get((m, step.target))) for m in contents] + [(step.model, step.config)]
    for model, config in copies:
        for resource, value in budget.copy_peaks(model, config).items():
            totals[resource] = totals.get(resource, 0.0) + value
    return totals


def _limit_raise(
    current: Placement,
    steps: list[Step],
    budget: Budget,
    blocked: Sequence[Step],
    stuck_contents: Mapping[str, set[str]],
) -> Relaxation | None:
    """The smallest single-device limit raise (relative to the limit) that unblocks the plan."""
    candidates = []
    for step in blocked:
        if step.target is None:
            continue
        over = budget.excess(step.target, _usage_with(budget, step, stuck_contents.get(step.target, set())))
        for resource, amount in over.items():
            limit = budget.limits[step.target][resource]
            candidates.append((amount / limit if limit else float("inf"), step.target, resource, amount))
    for _, device, resource, amount in sorted(candidates, key=lambda c: (c[0], c[1], c[2].value)):
        raised = {d: dict(limits) for d, limits in budget.limits.items()}
        raised[device][resource] += amount
        order = _Search(current, steps, replace(budget, limits=raised)).run()
        if order is not None:
            shown = format_bytes(amount) if resource.is_bytes else format_percent(amount)
            return Relaxation(
                f"raise the {resource.value} limit of {device} by {shown} for the duration of the moves", tuple(order)
            )
    return None
