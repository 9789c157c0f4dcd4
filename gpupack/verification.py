"""What verifying a plan means, shared by the profiler (which measures it) and the scheduler (which
plans with it): the devices of a plan as they are replayed, and the verdict on each.

A plan is verified device by device: each device's copies are loaded together on a scratch server,
each copy is driven at its planned request rate for a while, and the device passes when every copy
serves its rate within its latency budget and the device stays within its limits. The formats are
fixed by issue 29 (``gpupack verify --format json``) so that other tools can drive them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence


@dataclass(frozen=True)
class PlannedCopy:
    """One copy of a model on a planned device, at the rate the plan sends it."""

    model: str
    config: str | None  # the profiled configuration it runs; None: as the repository has it
    rate_per_second: float
    budget_seconds: float | None = None  # its p99 latency budget, when the demand gives one


@dataclass(frozen=True)
class PlannedDevice:
    name: str
    copies: tuple[PlannedCopy, ...]
    predicted: Mapping[str, float] = field(default_factory=dict)  # resource -> what the plan adds up to


@dataclass(frozen=True)
class ModelVerdict:
    model: str
    rate_per_second: float
    served_per_second: float
    p99_seconds: float | None
    budget_seconds: float | None
    passed: bool
    reason: str = ""  # why it failed, for people: "p99 0.41 s over its 0.2 s budget"


@dataclass(frozen=True)
class DeviceVerdict:
    name: str
    passed: bool
    predicted: Mapping[str, float]
    measured: Mapping[str, float]
    models: tuple[ModelVerdict, ...]

    @property
    def failed_group(self) -> frozenset[str]:
        """The models that must not share a device again, when this one failed."""
        return frozenset(copy.model for copy in self.models) if not self.passed else frozenset()

    def document(self) -> dict[str, Any]:
        """One entry of ``gpupack verify --format json``'s ``devices`` list."""
        return {
            "name": self.name,
            "passed": self.passed,
            "predicted": dict(self.predicted),
            "measured": dict(self.measured),
            "models": [
                {"model": m.model, "rate_per_second": m.rate_per_second, "served_per_second": m.served_per_second,
                 "p99_seconds": m.p99_seconds, "budget_seconds": m.budget_seconds, "passed": m.passed}
                for m in self.models
            ],
        }


class Verifier(Protocol):
    """Replays devices and judges them; the profiler implements it, the planner calls it."""

    def verify(self, devices: Sequence[PlannedDevice]) -> list[DeviceVerdict]: ...
