"""The rebalancer: read the fleet, judge it, plan the fewest safe moves, carry them out safely.

One object serves both ``gpupack rebalance`` (plan, print, maybe apply) and the rules engine's
loop (``request(violations)`` for policies whose action is ``rebalance``). Everything that acts
runs under the state directory's lock, re-reads the fleet first (a plan made before the lock may
be stale), and leaves a trail in the audit log and the metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from gpupack.domain import Placement
from gpupack.errors import GpupackError, InputError
from gpupack.model_configs import ModelConfig
from gpupack.rules.evaluator import Result, evaluate
from gpupack.rules.policy import PolicySet
from gpupack.scheduler.rebalance.audit import AuditLog
from gpupack.scheduler.rebalance.current import FleetView, read_fleet
from gpupack.scheduler.rebalance.executor import (
    Executor,
    GpuSlot,
    MultiGpuExecutor,
    ServerPerDeviceExecutor,
    StepContext,
    StepFailedError,
)
from gpupack.scheduler.rebalance.inputs import FleetInputs
from gpupack.scheduler.rebalance.metrics import RebalanceState
from gpupack.scheduler.constraints import problem_from
from gpupack.scheduler.rebalance.configurations import plan_configurations
from gpupack.scheduler.rebalance.moves import MovePlan, plan_moves
from gpupack.scheduler.rebalance.steps import Budget, Step
from gpupack.scheduler.planning import plan_under
from gpupack.scheduler.packing.problem import DeviceCountProof, Objective
from gpupack.scheduler.rebalance.admission import Admission, Cooldowns, admit
from gpupack.scheduler.rebalance.locks import Lock, LockLostError
from gpupack.scheduler.rebalance.settings import RebalanceSettings, lock_factory
from gpupack.triton.control import TritonControl
from gpupack.servers import ServerConfig

log = logging.getLogger(__name__)

# Fewest moves first; among those, the most headroom.
OBJECTIVES = (Objective.MIN_MOVES, Objective.BALANCE)


class StalePlanError(GpupackError):
    """The fleet changed between planning and acting."""


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
        return (all(s.succeeded for s in self.steps) and not self.stopped
                and (self.plan.moves.safe or not self.plan.violations))


class Rebalancer:
    def __init__(
        self,
        servers: Sequence[ServerConfig],
        inputs: Callable[[], FleetInputs],
        policies: PolicySet,
        settings: RebalanceSettings,
        state: RebalanceState | None = None,
        progress: Callable[[str], None] = lambda line: None,
        control: Callable[[ServerConfig, float], TritonControl] = TritonControl,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.servers = tuple(servers)
        self.inputs = inputs
        self.policies = policies
        self.settings = settings
        self.state = state or RebalanceState()
        self._copy_capacity_per_second: dict[str, float] = {}
        self.progress = progress
        self.control = control
        self.clock = clock
        self.audit = AuditLog(settings.state_dir / "audit.jsonl", clock)
        self.cooldowns = Cooldowns(settings.state_dir / "cooldown.json", settings.cooldown_seconds, clock)
        self.lock = settings.lock or lock_factory(None, settings.state_dir, {})

    def _read_fleet(self, inputs: FleetInputs) -> FleetView:
        timeout_seconds = self.settings.step_timeout_seconds
        fleet = read_fleet(self.servers, inputs.gpus, lambda e: self.control(e, timeout_seconds), self.clock)
        self.state.publish_placement(fleet)
        self._copy_capacity_per_second = inputs.loaded_capacities(fleet)
        return fleet

    def loaded_copy_capacities(self) -> dict[str, float]:
        """What one copy of each model serves in the configuration it was loaded in at the last read."""
        return self._copy_capacity_per_second

    def refresh_placement(self) -> FleetView:
        """Read and publish where every model is now, for ``/api/v1/placement`` between runs."""
        return self._read_fleet(self.inputs())

    def plan(self, policies: PolicySet | None = None) -> RebalancePlan:
        """What would be done now; changes nothing on the fleet.

        ``policies`` replaces the set given at construction: the rules engine passes the one it
        just evaluated, which it reloads when the files change.
        """
        policies = self.policies if policies is None else policies
        inputs = self.inputs()
        fleet = self._read_fleet(inputs)
        inputs = inputs.with_fleet(fleet)
        violations = evaluate(inputs.snapshot(fleet), policies, fleet.placement).violations
        constraints = inputs.constraints(fleet, policies)
        models, devices, baseline = inputs.models(fleet), [d.device for d in inputs.devices], inputs.server_baseline()
        problem = problem_from(constraints, models, devices, baseline, current=fleet.placement)
        broken: tuple[str, ...] = ()
        budget = Budget.from_problem(problem)
        proof = None
        reconfigured = plan_configurations(inputs, fleet, constraints, OBJECTIVES,
                                           self.settings.solve_time_limit_seconds) if violations else None
        if reconfigured is not None:
            problem, target, budget = reconfigured.problem, reconfigured.placement, reconfigured.budget
            moves = plan_moves(fleet.placement, target, budget, reconfigured.configs)
        elif violations:
            planned = plan_under(constraints, models, devices, baseline, OBJECTIVES,
                                 self.settings.solve_time_limit_seconds, current=fleet.placement)
            problem, target, broken = planned.problem, planned.result.placement, planned.broken_alerts
            proof = planned.result.proof
            budget = Budget.from_problem(problem)
            moves = plan_moves(fleet.placement, target, budget)
        else:
            target, moves = fleet.placement, MovePlan((), True, reason="no policy is violated")
        admission = admit(
            fleet.placement, moves.steps, budget, self.settings.max_moves, self.cooldowns.remaining_seconds()
        )
        return RebalancePlan(fleet, inputs, violations, target, moves, admission, broken, proof)

    def apply(self, plan: RebalancePlan) -> RebalanceOutcome:
        """Carry out a plan's admitted steps, if the fleet still looks as it did when planned."""
        with self.lock() as held:
            now = self._read_fleet(plan.inputs)
            if now.placement != plan.fleet.placement:
                raise StalePlanError("the placement changed since the plan was made; run again to re-plan")
            if plan.inputs.loaded_configs(now) != plan.inputs.loaded_configs(plan.fleet):
                raise StalePlanError("a model's configuration changed since the plan was made; run again to re-plan")
            return self._execute(plan, held)

    def request(self, violations: Sequence[object], policies: PolicySet | None = None) -> RebalanceOutcome | None:
        """Entry point for the rules engine: plan and act under the lock, if anything is violated."""
        if not violations:
            return None
        with self.lock() as held:
            described = [f"{v.policy} on {v.device or v.model}" if isinstance(v, Result) else str(v) for v in violations]
            self.audit.record("rebalance_requested", violations=described)
            return self._execute(self.plan(policies), held)

    def _execute(self, plan: RebalancePlan, held: Lock) -> RebalanceOutcome:
        admitted = plan.admission.admitted
        self.audit.record(
            "run_started",
            violations=[f"{v.policy} on {v.device or v.model}" for v in plan.violations],
            steps=[s.describe() for s in admitted],
            deferred=[f"{s.describe()}: {why}" for s, why in plan.admission.deferred],
            safe=plan.moves.safe,
            device_count_proof=plan.proof.as_dict() if plan.proof is not None else None,
        )
        executor = self._executor(plan)
        outcomes: list[StepOutcome] = []
        stopped = ""
        for number, step in enumerate(admitted, start=1):
            self.progress(f"[{number}/{len(admitted)}] {step.describe()}")
            try:
                held.ensure_held()  # another scheduler may act once ours is gone: not one more step
            except LockLostError as e:
                stopped = str(e)
                self.audit.record("lock_lost", error=stopped, steps_left=len(admitted) - len(outcomes))
                self.progress(f"[{number}/{len(admitted)}] stopped: {e}")
                break
            started = time.monotonic()
            try:
                executor.execute(step)
            except StepFailedError as e:
                outcomes.append(StepOutcome(step, False, time.monotonic() - started, str(e)))
                self.state.count_moves("failed")
                self.progress(f"[{number}/{len(admitted)}] failed: {e}")
                break  # later steps were planned assuming this one; stop here
            self.cooldowns.record_move(step.model)
            self._republish_placement(plan.inputs)  # before the counter: a scrape never sees a move done but not placed
            self.state.count_moves("succeeded")
            outcomes.append(StepOutcome(step, True, time.monotonic() - started))
            self.progress(f"[{number}/{len(admitted)}] done in {outcomes[-1].seconds:.1f}s")
        not_run = len(admitted) - len(outcomes) + len(plan.admission.deferred)
        if not_run:
            self.state.count_moves("deferred", not_run)
        outcome = RebalanceOutcome(plan, tuple(outcomes), stopped)
        if outcome.succeeded:
            self.state.mark_success(self.clock())
        self._read_fleet(plan.inputs)
        self.audit.record("run_finished", succeeded=outcome.succeeded, steps_done=sum(o.succeeded for o in outcomes))
        return outcome

    def _republish_placement(self, inputs: FleetInputs) -> None:
        """A step is done whether or not the fleet answers the read that follows it."""
        try:
            self._read_fleet(inputs)
        except GpupackError as e:
            log.warning("placement not re-read after a step, /api/v1/placement shows the last one read: %s", e)

    def _executor(self, plan: RebalancePlan) -> Executor:
        context = StepContext(
            self.audit,
            self.settings.step_timeout_seconds,
            self.settings.drain_seconds,
            progress=self.progress,
            control=self.control,
            configs=_profiled_configs(plan.inputs),
        )
        return build_executor(plan.inputs, plan.fleet.placement, self.servers, context)


def _profiled_configs(inputs: FleetInputs) -> dict[str, dict[str, ModelConfig]]:
    searched = inputs.profile.configs if inputs.profile is not None else {}
    return {model: {c.name: c for c in configs} for model, configs in searched.items()}


def build_executor(
    inputs: FleetInputs, current: Placement, servers: Sequence[ServerConfig], context: StepContext
) -> Executor:
    """One server per device (mode a), or one server over several GPUs (mode b); nothing in between."""
    endpoints = {s.name: s for s in servers}
    server_of: dict[str, str] = {}
    for entry in inputs.devices:
        managed = [s for s in entry.servers if s in endpoints]
        if len(managed) > 1:
            raise InputError(f"device {entry.device.name} is shared by servers {', '.join(managed)}: rebalancing "
                             "needs one server per device or one server over several GPUs")
        if managed:
            server_of[entry.device.name] = managed[0]
    devices_per_server: dict[str, list[str]] = {}
    for device, server in server_of.items():
        devices_per_server.setdefault(server, []).append(device)
    if all(len(devices) == 1 for devices in devices_per_server.values()):
        return ServerPerDeviceExecutor({d: endpoints[s] for d, s in server_of.items()}, context)
    if len(devices_per_server) > 1:
        raise InputError("several servers each drive several GPUs: rebalance one multi-GPU server per run")
    (server, devices), = devices_per_server.items()
    index_of = {name: index for (owner, index), name in inputs.gpus.names.items() if owner == server}
    missing = sorted(d for d in devices if d not in index_of)
    if missing:
        raise InputError(f"device {missing[0]} of server {server} has no GPU index in the exporter's data")
    slots = {d: GpuSlot(endpoints[server], {"kind": "KIND_GPU", "gpus": [index_of[d]]}) for d in devices}
    return MultiGpuExecutor(slots, current, context)
