"""The vocabulary of a move plan: a step (one model arriving, leaving or switching configuration)
and the budget every step is checked against.

Apart from the search that orders steps (:mod:`gpupack.scheduler.rebalance.moves`) because the executor,
the safety checks and the demand rebalancer speak it too, without needing the search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

from gpupack.scheduler.packing.problem import Dimension, PlacementProblem

TOLERANCE = 1e-9  # relative and absolute slack on a limit: float sums of peaks must not flip a verdict


@dataclass(frozen=True)
class Step:
    """One model changing devices. ``source`` None adds a replica, ``target`` None drops one;
    ``source`` equal to ``target`` reloads the copy there in ``config``."""

    model: str
    source: str | None
    target: str | None
    temporary: bool = False  # part of a relaxation: the model goes on to its final device later
    config: str | None = None  # the profiled configuration the arriving copy runs; None: as the repository has it

    @property
    def kind(self) -> str:
        if self.source is None:
            return "load"
        if self.source == self.target:
            return "reconfigure"
        return "unload" if self.target is None else "move"

    def describe(self) -> str:
        via = " (temporary)" if self.temporary else ""
        as_config = f" as {self.config}" if self.config is not None else ""
        if self.kind == "reconfigure":
            return f"reconfigure {self.model} on {self.target} to {self.config}"
        if self.kind == "load":
            return f"load {self.model} on {self.target}{as_config}"
        if self.kind == "unload":
            return f"unload {self.model} from {self.source}"
        return f"move {self.model} {self.source} -> {self.target}{as_config}{via}"


@dataclass(frozen=True)
class Budget:
    """What each device may hold and what each model costs, in base units.

    A scoped limit (only some models count) is one more dimension beside the resources. A
    device whose server baseline differs from ``server_baseline`` has its limits shifted by the
    difference, so that ``usage`` can add one baseline everywhere.
    """

    limits: Mapping[str, Mapping[Dimension, float]]  # device -> dimension -> absolute limit
    peaks: Mapping[str, Mapping[Dimension, float]]  # model -> dimension -> peak (baseline excluded)
    server_baseline: Mapping[Dimension, float] = field(default_factory=dict)  # once per busy device
    # model -> the fewest copies that must serve it at every step (replicas, throughput policies)
    min_copies: Mapping[str, int] = field(default_factory=dict)
    # model -> configuration -> peaks of one copy in it; a copy in a configuration not named here costs ``peaks``
    config_peaks: Mapping[str, Mapping[str, Mapping[Dimension, float]]] = field(default_factory=dict)
    loaded_configs: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (model, device) -> today's
    # model -> configuration -> what one copy serves, and model -> what its copies must serve together:
    # no step takes a model's capacity below that (make-before-break for capacity, across configurations)
    config_capacity_per_second: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    required_per_second: Mapping[str, float] = field(default_factory=dict)

    def copy_peaks(self, model: str, config: str | None) -> Mapping[Dimension, float]:
        known = self.config_peaks.get(model, {})
        return known[config] if config is not None and config in known else self.peaks.get(model, {})

    @classmethod
    def from_problem(cls, problem: PlacementProblem) -> "Budget":
        """The limits the solver placed under, so a plan's steps and its target agree."""
        resources = {r for m in problem.models for r in m.peaks} | set(problem.server_baseline)
        limits: dict[str, dict[Dimension, float]] = {}
        for device in problem.devices:
            known = set(device.capacity) | set(problem.limits.get(device.name, {}))
            limits[device.name] = {
                resource: problem.limit(device, resource)
                + problem.server_baseline.get(resource, 0.0) - problem.baseline(device.name, resource)
                for resource in resources | known
                if resource in known or not resource.is_bytes  # unknown memory: the solver has none either
            }
            for scoped in problem.scoped_limits:
                if device.name in scoped.limits:
                    limits[device.name][scoped] = scoped.limits[device.name] - scoped.baselines.get(device.name, 0.0)
        peaks: dict[str, dict[Dimension, float]] = {m.model: {r: v for r, v in m.peaks.items()} for m in problem.models}
        for scoped in problem.scoped_limits:
            for model, amount in scoped.demand.items():
                peaks.setdefault(model, {})[scoped] = amount
        baseline: dict[Dimension, float] = {r: v for r, v in problem.server_baseline.items()}
        return cls(MappingProxyType(limits), MappingProxyType(peaks), MappingProxyType(baseline),
                   MappingProxyType(dict(problem.replicas)))

    def usage(self, models: Iterable[str]) -> dict[Dimension, float]:
        models = list(models)
        totals: dict[Dimension, float] = {}
        if models:
            totals.update(self.server_baseline)
        for model in models:
            for resource, value in self.peaks.get(model, {}).items():
                totals[resource] = totals.get(resource, 0.0) + value
        return totals

    def excess(self, device: str, usage: Mapping[Dimension, float]) -> dict[Dimension, float]:
        """How far each resource of ``usage`` is over the device's limit (empty when within)."""
        limits = self.limits.get(device, {})
        return {
            resource: used - limits[resource]
            for resource, used in usage.items()
            if resource in limits and used > limits[resource] * (1 + TOLERANCE) + TOLERANCE
        }
