"""The closed loop follows a schedule: ``gpupack rules run --schedule FILE --lead 10m``.

Once per evaluation, after the policies have been judged (and a violation handed to the
scheduler), the follower looks for the step whose start lies within the lead of now. A step not
carried out yet is carried out once: its placement mapped onto the live devices so that the fewest
copies move, judged with the live demand by the ``rebalance`` policies (re-planned under them when
it breaks one, skipped when none can be met), and the moves planned from the placement read now,
made by the scheduler as a rebalance run (lock, admission, router, desired state, audit log). The
step carried out last is kept in the state directory, so a restarted engine does not redo it. A
step whose moves are deferred (``--max-moves``, cooldowns) is carried on at the next evaluation.
A step whose Triton calls fail (rolled back by the run) is tried again at the next evaluations, up
to STEP_ATTEMPTS in all, before it counts as failed; a step not through (failing, or its moves
deferred) when the next one comes due counts as failed too. After the last step the policies
alone guard. Dry run logs what would be done and changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpupack.closedloop.schedule_file import FollowedSchedule, ScheduledStep
from gpupack.demand_series import format_timestamp
from gpupack.errors import GpupackError, UnreachableError
from gpupack.rules.loop import Acting, WsgiApp
from gpupack.rules.peaks import PeaksUnavailableError
from gpupack.rules.policy import PolicySet
from gpupack.scheduler.rebalance.locks import LockHeldError
from gpupack.scheduler.rebalance.outcome import RebalanceOutcome
from gpupack.scheduler.rebalance.rebalancer import Rebalancer
from gpupack.scheduler.rebalance.report import plan_document
from gpupack.scheduler.rebalance.toward import TowardPlan, Wish

log = logging.getLogger(__name__)

RESULTS = ("applied", "replanned", "skipped", "failed")
# A step whose moves fail is carried out at most this many times, once per evaluation: a server
# restarting or a load refused for a moment passes within seconds and the step then holds for its
# whole length, while a model that cannot load is not tried every evaluation of the step.
STEP_ATTEMPTS = 3
STATE_FILE = "schedule.json"


def wish_of(step: ScheduledStep) -> Wish:
    """A step as the scheduler's wish: its devices' models, each model's configuration and rate."""
    copies = [c for device in step.devices.values() for c in device]
    return Wish({name: step.models_on(name) for name in step.devices}, {c.model: c.config for c in copies},
                {c.model: c.rate_per_second for c in copies})


class ScheduleFollower(Collector):
    """Called once per evaluation; a collector of the ``gpupack_schedule_*`` metrics."""

    def __init__(self, schedule: FollowedSchedule, rebalancer: Rebalancer, policies: Callable[[], PolicySet],
                 lead_seconds: float, apply: bool, clock: Callable[[], float] = time.time) -> None:
        self.schedule, self.rebalancer, self.policies = schedule, rebalancer, policies
        self.lead_seconds, self.apply, self.clock = lead_seconds, apply, clock
        self.state_path = rebalancer.settings.state_dir / STATE_FILE
        self.last_done = self._read_state() if apply else None  # a dry run has done nothing to remember
        self.steps_total = dict.fromkeys(RESULTS, 0)
        self._started: int | None = None  # the step whose schedule_step_started is in the audit log
        self._finished_said = False
        self._said: dict[str, int] = {}  # event -> the step it was last logged for
        # While a step whose moves failed is tried again: the step, its attempts, the last one's details.
        self._failed: tuple[int, int, dict[str, Any]] | None = None

    def __call__(self) -> None:
        due = self.schedule.due(self.clock(), self.lead_seconds)
        if due < 0 or (self.last_done is not None and due <= self.last_done):
            return
        started = self._started
        if started is not None and started < due and (self.last_done is None or started > self.last_done):
            # A later step came due before this one went through (its moves failed, or were deferred).
            details = self._failed[2] if self._failed is not None and self._failed[0] == started else {}
            self._finish(started, "failed", self._about(started), **details,
                         error=f"step {due} came due before the moves of step {started} were all made")
        if due >= len(self.schedule.steps):
            if not self._finished_said:
                self._finished_said = True
                _log(logging.INFO, "schedule_finished", schedule=self.schedule.path, steps=len(self.schedule.steps),
                     note="after the schedule's last step the policies alone guard")
            return
        self._carry_out(self.schedule.steps[due])

    def _carry_out(self, step: ScheduledStep) -> None:
        k, wish = step.index, wish_of(step)
        about = self._about(k)
        try:
            if not self.apply:
                planned = self.rebalancer.plan_toward(wish, self.policies())
                self.last_done = k  # in memory only: a plan is advice, logged once per step
                _log(logging.WARNING, "schedule_step_planned", **about, dry_run=True, **_described(planned, None))
                return
            if self._started != k:
                self.rebalancer.audit.record("schedule_step_started", **about)
                self._started = k
            planned, outcome = self.rebalancer.move_toward(wish, self.policies())
        except (LockHeldError, UnreachableError, PeaksUnavailableError) as e:  # wait for the lock or the source
            self._once(logging.WARNING, "schedule_step_waiting", k, **about, reason=str(e))
            return
        except GpupackError as e:
            self._finish(k, "failed", about, error=str(e))
            return
        result = _result(planned, outcome)
        if result == "failed" and _rolled_back(outcome):
            attempt = 1 + (self._failed[1] if self._failed is not None and self._failed[0] == k else 0)
            if attempt < STEP_ATTEMPTS:  # the next evaluation tries again from the placement then
                self._failed = (k, attempt, _described(planned, outcome))
                _log(logging.WARNING, "schedule_step_retrying", **about, attempt=attempt, attempts=STEP_ATTEMPTS,
                     **self._failed[2])
                return
        if result is None:  # the next evaluation carries on
            self._once(logging.INFO, "schedule_step_deferred", k, **about, **_described(planned, outcome))
            return
        self._finish(k, result, about, **_described(planned, outcome))

    def _about(self, k: int) -> dict[str, Any]:
        return {"schedule": self.schedule.path, "step": k, "step_start": format_timestamp(self.schedule.start_of(k))}

    def _once(self, level: int, event: str, k: int, **fields: Any) -> None:
        """An event that may recur every evaluation while a step waits, logged once for the step."""
        if self._said.get(event) != k:
            self._said[event] = k
            _log(level, event, **fields)

    def _finish(self, k: int, result: str, about: dict[str, Any], **details: Any) -> None:
        self.last_done, self._failed = k, None
        level = logging.ERROR if result == "failed" else logging.WARNING
        if not self.apply:  # a dry run leaves no trace but its log
            _log(level, f"schedule_step_{result}", **about, dry_run=True, **details)
            return
        self.rebalancer.audit.record("schedule_step_finished", **about, result=result,
                                     **{key: details[key] for key in ("reason", "error", "replanned_because")
                                        if details.get(key)})
        self.steps_total[result] += 1
        self._write_state(k, result)
        _log(level, f"schedule_step_{result}", **about, **details)

    def _read_state(self) -> int | None:
        """The step last carried out of this very schedule (the same bytes), or None."""
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("%s unreadable, following %s from its current step: %s", self.state_path, self.schedule.path, e)
            return None
        if not isinstance(state, dict) or state.get("digest") != self.schedule.digest:
            return None
        step = state.get("step")
        return step if isinstance(step, int) else None

    def _write_state(self, k: int, result: str) -> None:
        temporary = self.state_path.with_suffix(".tmp")
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps({"schedule": self.schedule.path, "digest": self.schedule.digest,
                                             "step": k, "result": result, "time_seconds": self.clock()}))
            os.replace(temporary, self.state_path)
        except OSError as e:
            log.error("the step carried out last was not written to %s (a restart would carry it out again): %s",
                      self.state_path, e)

    def collect(self) -> Iterator[Metric]:
        if self.last_done is not None and self.apply:
            yield GaugeMetricFamily("gpupack_schedule_step", "The step of the followed schedule carried out last "
                                    "(0-based).", value=self.last_done)
        upcoming = max(0 if self.last_done is None else self.last_done + 1,
                       self.schedule.due(self.clock(), self.lead_seconds))
        if upcoming < len(self.schedule.steps):
            yield GaugeMetricFamily("gpupack_schedule_next_step_start_timestamp_seconds",
                                    "When the next step of the followed schedule begins; it is carried out the "
                                    "lead before.", value=self.schedule.start_of(upcoming))
        counter = CounterMetricFamily("gpupack_schedule_steps", "Steps of the followed schedule, by result: applied "
                                      "as planned, replanned under the policies with live demand, skipped, failed.",
                                      labels=["result"])
        for result in RESULTS:
            counter.add_metric([result], self.steps_total[result])
        yield counter


def _result(planned: TowardPlan, outcome: RebalanceOutcome | None) -> str | None:
    """The step's result, or None while moves the admission deferred are still to be made."""
    plan = planned.plan
    if plan is None:
        return "skipped"
    if not plan.moves.safe or (outcome is not None and not outcome.succeeded):
        return "failed"
    if plan.admission.deferred:
        return None
    return "replanned" if planned.replanned_because else "applied"


def _rolled_back(outcome: RebalanceOutcome | None) -> bool:
    """Whether a run's Triton calls failed (a load, a probe, the lock lost) and it was rolled back:
    a run that may go through when tried again, unlike a plan with no safe order."""
    return outcome is not None and (bool(outcome.stopped) or not all(step.succeeded for step in outcome.steps))


def _described(planned: TowardPlan, outcome: RebalanceOutcome | None) -> dict[str, Any]:
    details: dict[str, Any] = {"replanned_because": list(planned.replanned_because), "reason": planned.reason}
    if planned.plan is not None:
        document = plan_document(planned.plan, outcome)
        details.update({key: document[key] for key in ("target", "steps", "deferred", "safe", "applied", "stopped")
                        if key in document})
        if not planned.plan.moves.safe:
            details["reason"] = planned.plan.moves.reason
    return details


def _log(level: int, event: str, **fields: Any) -> None:
    log.log(level, json.dumps({"event": event, **fields}, default=str))


def following(acting: Acting, follower: ScheduleFollower) -> Acting:
    """``acting`` that also follows the schedule once per evaluation, after the placement is
    refreshed (lost models reloaded), and serves the follower's metrics on the same port."""
    def refresh() -> object:
        try:
            return acting.refresh_placement()
        finally:  # a placement that could not be read is logged by the engine; the follower reads its own
            follower()

    def app(registry: CollectorRegistry) -> WsgiApp:
        registry.register(follower)
        return acting.app(registry)

    return dataclasses.replace(acting, refresh_placement=refresh, app=app)
