"""What a rebalance run decided and how it went: the plan, and each step's outcome.

Apart from the rebalancer so that what reads them (the report, the closed loop's log, the
verification gate) needs neither the solver nor the executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpupack.domain import Placement
from gpupack.rules.evaluator import Result
from gpupack.scheduler.packing.problem import DeviceCountProof
from gpupack.scheduler.rebalance.admission import Admission
from gpupack.scheduler.rebalance.current import FleetView
from gpupack.scheduler.rebalance.inputs import FleetInputs
from gpupack.scheduler.rebalance.moves import MovePlan
from gpupack.scheduler.rebalance.steps import Step


@dataclass(frozen=True)
class RebalancePlan:
    fleet: FleetView
    inputs: FleetInputs
    violations: tuple[Result, ...]
    target: Placement
    moves: MovePlan
    admission: Admission
    broken_alerts: tuple[str, ...] = ()  # alert policies the target still breaks (they never block a plan)
    proof: DeviceCountProof | None = None  # of the target's device count; None when nothing was solved
    unsatisfiable: tuple[str, ...] = ()  # rebalance policies no placement meets: planned without them


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    succeeded: bool
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class RebalanceOutcome:
    plan: RebalancePlan
    steps: tuple[StepOutcome, ...] = field(default_factory=tuple)
    stopped: str = ""  # why the run stopped before its remaining steps (the lock was lost)

    @property
    def succeeded(self) -> bool:
        return (all(s.succeeded for s in self.steps) and not self.stopped and not self.plan.unsatisfiable
                and (self.plan.moves.safe or not self.plan.violations))
