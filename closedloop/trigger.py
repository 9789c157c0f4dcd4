"""What the closed loop does when a ``rebalance`` policy is violated and the rules engine knows the servers.

Dry run (the default) logs the plan the scheduler would carry out and changes nothing; ``apply``
has the scheduler carry it out, under its lock, and makes every refresh of the placement reload
the models that have no ready copy (the desired state, :mod:`gpupack.scheduler.rebalance.desired`). Neither may stop the loop: a lock held by another
replica, a server that does not answer or a plan that cannot be made is logged. Such a request,
and one that leaves steps deferred (``--max-moves``, cooldowns) or failed, answers ``RETRY``: the
tracker asks again while the violation lasts, after a back-off.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from gpupack.errors import GpupackError
from gpupack.rules.evaluator import Result
from gpupack.rules.policy import PolicySet
from gpupack.rules.transitions import RequestOutcome
from gpupack.scheduler.rebalance.report import plan_document
from gpupack.scheduler.rebalance.rebalancer import Rebalancer, RebalanceOutcome, RebalancePlan
from gpupack.scheduler.rebalance.locks import LockHeldError

log = logging.getLogger(__name__)


class RebalanceTrigger:
    """A ``request_rebalance`` for :class:`~gpupack.rules.transitions.ViolationTracker`, made by the scheduler."""

    def __init__(self, rebalancer: Rebalancer, policies: Callable[[], PolicySet], apply: bool) -> None:
        self.rebalancer, self.policies, self.apply = rebalancer, policies, apply
        # A loop that acts also reloads, on every refresh, each model that has no ready copy.
        rebalancer.restore_under = policies if apply else None

    def __call__(self, violations: tuple[Result, ...]) -> RequestOutcome:
        asked = sorted(f"{v.policy}@{v.device or v.model}" for v in violations)
        try:
            if not self.apply:
                # A plan is only advice: logging it again would not change it.
                _log_plan("rebalance_planned", self.rebalancer.plan(self.policies()), None, asked)
                return RequestOutcome.SETTLED
            outcome = self.rebalancer.request(violations, self.policies())
        except LockHeldError as e:
            log.info(json.dumps({"event": "rebalance_skipped", "requested_for": asked, "reason": str(e)}))
            return RequestOutcome.RETRY
        except GpupackError as e:
            log.error(json.dumps({"event": "rebalance_failed", "requested_for": asked, "error": str(e)}))
            return RequestOutcome.RETRY
        if outcome is None:
            return RequestOutcome.SETTLED
        _log_plan("rebalance_applied", outcome.plan, outcome, asked)
        finished = outcome.succeeded and not outcome.plan.admission.deferred
        return RequestOutcome.SETTLED if finished else RequestOutcome.RETRY


def _log_plan(event: str, plan: RebalancePlan, outcome: RebalanceOutcome | None, asked: list[str]) -> None:
    # The whole fleet's current and target placement would make one line per fleet; steps suffice.
    document: dict[str, Any] = {k: v for k, v in plan_document(plan, outcome).items() if k not in ("current", "target")}
    record = {"event": event, "requested_for": asked, "dry_run": outcome is None, **document}
    if outcome is not None:
        record["succeeded"] = outcome.succeeded
    level = logging.ERROR if outcome is not None and not outcome.succeeded else logging.WARNING
    log.log(level, json.dumps(record, default=str))
