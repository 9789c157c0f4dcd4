"""The rebalancer: read the fleet, judge it, plan the fewest safe moves, carry them out safely.

One object serves both ``gpupack rebalance`` (plan, print, maybe apply) and the rules engine's
loop (``request(violations)`` for policies whose action is ``rebalance``). Everything that acts
runs under the state directory's lock, re-reads the fleet first (a plan made before the lock may
be stale), and leaves a trail in the audit log and the metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable, Sequence

from gpupack.errors import GpupackError, UnreachableError
from gpupack.model_configs import ModelConfig
from gpupack.rules.evaluator import Result, evaluate
from gpupack.rules.policy import PolicySet
from gpupack.scheduler.rebalance.audit import AuditLog
from gpupack.scheduler.rebalance.current import FleetView, read_fleet
from gpupack.scheduler.rebalance.desired import (
    Copy, Desired, DesiredStateError, DesiredStateFile, lost, observed, with_copy,
)
from gpupack.scheduler.rebalance.executor import ServerPerDeviceExecutor
from gpupack.scheduler.rebalance.step_mechanics import Executor, Phase, StepContext, StepFailedError, reload_model
from gpupack.scheduler.rebalance.drivers import build_executor, managed_devices
from gpupack.scheduler.rebalance.routing import align, by_model, copy_capacities
from gpupack.scheduler.rebalance.restore import where_to_reload
from gpupack.scheduler.rebalance.toward import TowardPlan, Wish, plan_toward
from gpupack.scheduler.rebalance.inputs import FleetInputs
from gpupack.scheduler.rebalance.metrics import RebalanceState
from gpupack.scheduler.rebalance.outcome import RebalanceOutcome, RebalancePlan, StepOutcome
from gpupack.scheduler.rebalance.solving import Fleet as SolvedFleet, target_for
from gpupack.scheduler.packing.problem import Objective
from gpupack.scheduler.rebalance.admission import Cooldowns, admit
from gpupack.scheduler.rebalance.locks import Lock, LockHeldError, LockLostError
from gpupack.scheduler.rebalance.settings import RebalanceSettings, lock_factory
from gpupack.triton.control import TritonControl, TritonControlError
from gpupack.servers import ServerConfig

log = logging.getLogger(__name__)

# A server slower than this to list its models is marked down rather than stalling every plan.
READ_TIMEOUT_SECONDS = 10.0
# Between runs the placement is re-read every evaluation, but the peaks it is read with (GPU
# indices, what a lost model weighs) only this often: the evaluation has just fetched them
# itself, and a stalled exporter must not cost every cycle a second timeout.
REFRESH_INPUTS_SECONDS = 60.0
# Fewest moves first; among those, the most headroom.
OBJECTIVES = (Objective.MIN_MOVES, Objective.BALANCE)


class StalePlanError(GpupackError):
    """The fleet changed between planning and acting."""


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
        self.desired = DesiredStateFile(settings.state_dir)
        # Set by the closed loop when it acts (``--apply``): every refresh then reloads lost models,
        # placing them under the policies this returns (the ones the rules engine last loaded).
        self.restore_under: Callable[[], PolicySet] | None = None
        self._last_inputs: FleetInputs | None = None
        self._inputs_read_at = float("-inf")
        self._down: dict[str, str] = {}
        self._reported_lost: set[str] = set()

    def _inputs(self, max_age_seconds: float = 0.0) -> FleetInputs:
        """The inputs, or the last good ones while their source does not answer: reading and
        restoring the fleet must not wait for the exporter's health. Read anew when older than
        ``max_age_seconds``."""
        if self._last_inputs is not None and self.clock() - self._inputs_read_at < max_age_seconds:
            return self._last_inputs
        try:
            self._last_inputs, self._inputs_read_at = self.inputs(), self.clock()
        except GpupackError as e:
            if self._last_inputs is None:
                raise
            log.warning("using the peaks last read: %s", e)
        return self._last_inputs

    def _desired(self) -> Desired:
        try:
            return self.desired.read()
        except DesiredStateError as e:
            log.error("%s", e)
            return {}

    def _read_fleet(self, inputs: FleetInputs) -> FleetView:
        timeout_seconds = min(self.settings.step_timeout_seconds, READ_TIMEOUT_SECONDS)
        fleet = read_fleet(self.servers, inputs.gpus, lambda e: self.control(e, timeout_seconds), self.clock)
        for server, why in sorted(fleet.down.items()):
            if server not in self._down:
                log.warning("server %s does not answer (%s): marked down, its models at risk; "
                            "planning goes on for the others", server, why)
        for server in sorted(set(self._down) - set(fleet.down)):
            log.warning("server %s answers again", server)
        self._down = dict(fleet.down)
        self.state.publish_placement(fleet, observed(self._desired(), fleet), copy_capacities(inputs, fleet),
                                     {s.name: s.url for s in self.servers})
        self._copy_capacity_per_second = inputs.loaded_capacities(fleet)
        return fleet

    def _write_desired(self, desired: Desired) -> None:
        self.desired.write(desired, self.clock())
        self.state.publish_desired(desired)

    def _close_unfinished_run(self) -> None:
        """Under the lock: a run still open in the audit log was cut short (its engine was killed)."""
        started = self.audit.unfinished_run()
        if started is not None:
            self.audit.record("run_finished", succeeded=False, interrupted=True,
                              run_started_at_seconds=started.get("time_seconds"),
                              reason="the scheduler stopped before the run finished; closed by the next one")

    def restore(self, policies: PolicySet | None = None) -> FleetView:
        """Reload every model the fleet should serve that has no ready copy, under the lock; with a
        router, also bring it in line with the placement, so a copy loaded by hand is reachable at
        the next evaluation rather than at the next rebalance run."""
        inputs = self._inputs(REFRESH_INPUTS_SECONDS)
        fleet = self._read_fleet(inputs)
        whole = not lost(observed(self._desired(), fleet), fleet) and self.audit.unfinished_run() is None \
            and self.desired.path.exists()
        if whole and self.settings.router is None:
            return fleet
        try:
            with self.lock() as held:  # never re-route while another scheduler is mid-move
                if whole:
                    self._align_router(inputs, fleet)
                    return fleet
                self._close_unfinished_run()
                return self._restore(inputs, policies or self.policies, held)
        except LockHeldError:  # the scheduler that holds it restores them
            return fleet

    def _restore(self, inputs: FleetInputs, policies: PolicySet, held: Lock) -> FleetView:
        fleet = self._read_fleet(inputs)
        desired = observed(self._desired(), fleet)
        self._write_desired(desired)
        context = self._context(inputs)
        server_of = managed_devices(inputs, self.servers)
        endpoints = {s.name: s for s in self.servers}
        for model in lost(desired, fleet):
            held.ensure_held()
            reload_at = where_to_reload(model, desired[model], fleet, inputs, policies, server_of)
            was = [f"{c.device} on {c.server}" for c in desired[model]]
            if reload_at.copy is None:
                if model not in self._reported_lost:
                    self.audit.record("model_lost", model=model, was=was, reason=reload_at.reason)
                    log.error("%s has no ready copy and is not reloaded: %s", model, reload_at.reason)
                self._reported_lost.add(model)
                continue
            where = reload_at.copy
            self.audit.record("model_reload_started", model=model, was=was, server=where.server, device=where.device,
                              reason=reload_at.reason)
            desired = with_copy(desired, model, where)
            self._write_desired(desired)
            try:
                reload_model(context, endpoints[where.server], model)
            except TritonControlError as e:
                self.audit.record("model_reload_failed", model=model, server=where.server, error=str(e))
                log.error("%s not reloaded on %s: %s", model, where.server, e)
                continue
            self._reported_lost.discard(model)
            self.audit.record("model_reloaded", model=model, server=where.server, device=where.device)
            self.progress(f"reloaded {model} on {where.device} ({where.server}): it had no ready copy")
            fleet = self._reread(inputs) or fleet
        try:
            self._align_router(inputs, fleet)  # clients reach what was reloaded
        except GpupackError as e:
            log.error("the router was not brought in line with the placement: %s", e)
        desired = observed(desired, fleet)
        self._write_desired(desired)
        return fleet

    def loaded_copy_capacities(self) -> dict[str, float]:
        """What one copy of each model serves in the configuration it was loaded in at the last read."""
        return self._copy_capacity_per_second

    def refresh_placement(self) -> FleetView:
        """Read and publish where every model is now, for ``/api/v1/placement`` between runs; when
        the loop acts, reload first every model that has no ready copy."""
        if self.restore_under is not None:
            return self.restore(self.restore_under())
        return self._read_fleet(self._inputs(REFRESH_INPUTS_SECONDS))

    def plan(self, policies: PolicySet | None = None) -> RebalancePlan:
        """What would be done now; changes nothing on the fleet.

        ``policies`` replaces the set given at construction: the rules engine passes the one it
        just evaluated, which it reloads when the files change.
        """
        policies = self.policies if policies is None else policies
        inputs, fleet = self._live()
        violations = evaluate(inputs.snapshot(fleet), policies, fleet.placement).violations
        devices = tuple(d.device for d in inputs.devices)
        placed = SolvedFleet(inputs, fleet, inputs.models(fleet), devices, inputs.server_baseline())
        solved = target_for(placed, inputs.constraints(fleet, policies), bool(violations), OBJECTIVES,
                            self.settings.solve_time_limit_seconds)
        admission = admit(
            fleet.placement, solved.moves.steps, solved.budget, self.settings.max_moves,
            self.cooldowns.remaining_seconds()
        )
        return RebalancePlan(fleet, inputs, violations, solved.target, solved.moves, admission, solved.broken_alerts,
                             solved.proof, solved.unsatisfiable)

    def _live(self) -> tuple[FleetInputs, FleetView]:
        """The inputs, read now, over the devices whose servers answer, and the fleet read now."""
        inputs = self._inputs()
        fleet = self._read_fleet(inputs)
        if self.servers and len(fleet.down) == len(self.servers):  # nothing to plan for: we cannot tell
            first = self.servers[0]
            raise UnreachableError(f"Triton server {first.name}", first.url, fleet.down[first.name])
        # Nothing is planned onto a server that does not answer; its models are at risk, not movable.
        inputs = replace(inputs, devices=tuple(d for d in inputs.devices if not fleet.is_down(d.servers)))
        return inputs.with_fleet(fleet), fleet

    def plan_toward(self, wish: Wish, policies: PolicySet | None = None) -> TowardPlan:
        """The moves from the placement now toward ``wish`` (a schedule's step); changes nothing."""
        inputs, fleet = self._live()
        return plan_toward(inputs, fleet, self.policies if policies is None else policies, wish,
                           self.settings.max_moves, self.cooldowns.remaining_seconds(), OBJECTIVES,
                           self.settings.solve_time_limit_seconds)

    def move_toward(self, wish: Wish, policies: PolicySet | None = None) -> tuple[TowardPlan, RebalanceOutcome | None]:
        """Plan toward ``wish`` and carry it out under the lock, as a run (audit log, router,
        desired state, admission); lost models come back first. No run when there is nothing to do."""
        with self.lock() as held:
            self._close_unfinished_run()
            self._restore(self._inputs(), policies or self.policies, held)
            planned = self.plan_toward(wish, policies)
            if planned.plan is None or not planned.plan.admission.admitted:
                return planned, None
            return planned, self._execute(planned.plan, held)

    def apply(self, plan: RebalancePlan) -> RebalanceOutcome:
        """Carry out a plan's admitted steps, if the fleet still looks as it did when planned."""
        with self.lock() as held:
            self._close_unfinished_run()
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
            self._close_unfinished_run()
            described = [f"{v.policy} on {v.device or v.model}" if isinstance(v, Result) else str(v) for v in violations]
            self.audit.record("rebalance_requested", violations=described)
            # Lost models come back before anything else is planned.
            self._restore(self._inputs(), policies or self.policies, held)
            return self._execute(self.plan(policies), held)

    def _execute(self, plan: RebalancePlan, held: Lock) -> RebalanceOutcome:
        admitted = plan.admission.admitted
        self.audit.record(
            "run_started",
            violations=[f"{v.policy} on {v.device or v.model}" for v in plan.violations],
            steps=[s.describe() for s in admitted],
            deferred=[f"{s.describe()}: {why}" for s, why in plan.admission.deferred],
            safe=plan.moves.safe,
            unsatisfiable=list(plan.unsatisfiable),
            servers_down=dict(plan.fleet.down),
            device_count_proof=plan.proof.as_dict() if plan.proof is not None else None,
        )
        executor = self._executor(plan)
        server_of = managed_devices(plan.inputs, self.servers)
        desired = observed(self._desired(), plan.fleet)
        outcomes: list[StepOutcome] = []
        stopped = ""
        succeeded = False
        try:
            self._align_router(plan.inputs, plan.fleet)
            if admitted and isinstance(executor, ServerPerDeviceExecutor):
                self.progress(f"clients follow each move through {self.settings.router.describe()}"
                              if self.settings.router is not None else
                              "clients are not being redirected: no router is configured (--router haproxy:PATH), "
                              f"so each move keeps both copies {self.settings.drain_seconds:g}s and clients of the "
                              "source must find the target themselves (/api/v1/placement names it)")
            for number, step in enumerate(admitted, start=1):
                self.progress(f"[{number}/{len(admitted)}] {step.describe()}")
                try:
                    held.ensure_held()  # another scheduler may act once ours is gone: not one more step
                except LockLostError as e:
                    stopped = str(e)
                    self.audit.record("lock_lost", error=stopped, steps_left=len(admitted) - len(outcomes))
                    self.progress(f"[{number}/{len(admitted)}] stopped: {e}")
                    break
                if step.target in server_of:  # desired at its target too before it arrives: a crash loses neither
                    desired = with_copy(desired, step.model, Copy(server_of[step.target], step.target))
                    self._write_desired(desired)
                started = time.monotonic()
                try:
                    executor.execute(step)
                except StepFailedError as e:
                    outcomes.append(StepOutcome(step, False, time.monotonic() - started, str(e)))
                    self.state.count_moves(e.result)
                    self.progress(f"[{number}/{len(admitted)}] failed: {e}")
                    break  # later steps were planned assuming this one; stop here
                self.cooldowns.record_move(step.model)
                fleet = self._reread(plan.inputs)  # before the counter: a scrape never sees a move done but not placed
                if fleet is not None:
                    desired = observed(desired, fleet)
                    self._write_desired(desired)
                self.state.count_moves("succeeded")
                outcomes.append(StepOutcome(step, True, time.monotonic() - started))
                self.progress(f"[{number}/{len(admitted)}] done in {outcomes[-1].seconds:.1f}s")
            not_run = len(admitted) - len(outcomes) + len(plan.admission.deferred)
            if not_run:
                self.state.count_moves("deferred", not_run)
            outcome = RebalanceOutcome(plan, tuple(outcomes), stopped)
            succeeded = outcome.succeeded
            if succeeded:
                self.state.mark_success(self.clock())
            fleet = self._reread(plan.inputs)
            if fleet is not None:
                self._write_desired(observed(desired, fleet))
            return outcome
        finally:  # every run is closed, whatever cut it short
            self.audit.record("run_finished", succeeded=succeeded, steps_done=sum(o.succeeded for o in outcomes))

    def _reread(self, inputs: FleetInputs) -> FleetView | None:
        """A step is done (or failed) whatever the read that follows it says: its error is logged,
        never the step's outcome."""
        try:
            return self._read_fleet(inputs)
        except GpupackError as e:
            log.warning("placement not re-read after a step, /api/v1/placement shows the last one read: %s", e)
            return None

    def _align_router(self, inputs: FleetInputs, fleet: FleetView) -> None:
        """Under the lock, before acting: the router in line with the placement, so a router that
        restarted (or a run cut short mid-drain) does not route by a stale picture."""
        if self.settings.router is None:
            return
        changes = align(self.settings.router, by_model(copy_capacities(inputs, fleet)),
                        tuple(s.name for s in self.servers))
        if changes:
            self.audit.record("router_aligned", router=self.settings.router.describe(), changes=changes)
            self.progress(f"{self.settings.router.describe()} brought in line with the placement: {'; '.join(changes)}")
        self.state.all_serving()

    def _published(self, inputs: FleetInputs, phase: Phase) -> None:
        """A phase of a step is done: ``/api/v1/placement`` shows it now, not after the step."""
        self.state.publish_routes(phase.model, phase.routes)
        self._reread(inputs)

    def _context(self, inputs: FleetInputs, fleet: FleetView | None = None) -> StepContext:
        return StepContext(
            self.audit,
            self.settings.step_timeout_seconds,
            self.settings.drain_seconds,
            progress=self.progress,
            control=self.control,
            configs=_profiled_configs(inputs),
            router=self.settings.router,
            publish=lambda phase: self._published(inputs, phase),
            copies=copy_capacities(inputs, fleet) if fleet is not None else {},
        )

    def _executor(self, plan: RebalancePlan) -> Executor:
        return build_executor(plan.inputs, plan.fleet.placement, self.servers, self._context(plan.inputs, plan.fleet))


def _profiled_configs(inputs: FleetInputs) -> dict[str, dict[str, ModelConfig]]:
    searched = inputs.profile.configs if inputs.profile is not None else {}
    return {model: {c.name: c for c in configs} for model, configs in searched.items()}
