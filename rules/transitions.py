"""From one evaluation to the next: a log line per new violation and per resolution, and a
rebalance request when a ``rebalance`` policy is newly violated, asked again while it lasts if the
last request did not settle it.

``unknown`` resolves nothing: a violation whose policy and device cannot be judged now stays
active until a real evaluation says it is over; it is not asked about while unknown.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

from gpupack.rules.evaluator import Evaluation, Result, Status
from gpupack.rules.policy import Action
from gpupack.rules.report import result_record

log = logging.getLogger(__name__)

ViolationKey = tuple[str, str, str]  # policy, device, model


class RequestOutcome(enum.Enum):
    SETTLED = "settled"  # done, or nothing to do: ask again only if the violation resolves and returns
    RETRY = "retry"  # skipped (lock held), failed, or steps left deferred: ask again while it lasts


RebalanceRequest = Callable[[tuple[Result, ...]], RequestOutcome]


@dataclass(frozen=True)
class RetryBackoff:
    """How long to wait before asking again after ``attempts`` unsettled requests in a row.

    Doubling: a lock another replica holds, or a server that is down, is not hammered every
    interval; the cap keeps a deferred move from waiting much longer than its cooldown.
    """

    first_seconds: float = 60.0
    max_seconds: float = 900.0

    def delay_seconds(self, attempts: int) -> float:
        return min(self.first_seconds * 2.0 ** max(attempts - 1, 0), self.max_seconds)


def log_rebalance_request(violations: tuple[Result, ...]) -> RequestOutcome:
    """The default until a scheduler is plugged in: say what would be asked for."""
    targets = sorted({f"{v.policy}@{v.device or v.model}" for v in violations})
    log.warning(json.dumps({"event": "rebalance_requested", "violations": targets}))
    return RequestOutcome.SETTLED


def _key(result: Result) -> ViolationKey:
    return (result.policy, result.device, result.model)


class ViolationTracker:
    def __init__(self, request_rebalance: RebalanceRequest = log_rebalance_request,
                 backoff: RetryBackoff = RetryBackoff(), clock: Callable[[], float] = time.monotonic) -> None:
        self.request_rebalance, self.backoff, self.clock = request_rebalance, backoff, clock
        self.active: dict[ViolationKey, Result] = {}
        self.unsettled: set[ViolationKey] = set()  # rebalance violations whose last request did not settle them
        self._attempts = 0
        self._retry_at_seconds = 0.0

    def update(self, evaluation: Evaluation) -> None:
        violated = {_key(r): r for r in evaluation.violations}
        unknown = {_key(r) for r in evaluation.results if r.status is Status.UNKNOWN}
        new = [r for key, r in violated.items() if key not in self.active]
        resolved = [r for key, r in self.active.items() if key not in violated and key not in unknown]
        for result in new:
            self._log("violation", result, evaluation, logging.WARNING)
        for result in resolved:
            self._log("resolved", result, evaluation, logging.INFO)
        still_unknown = {key: r for key, r in self.active.items() if key in unknown}
        self.active = {**still_unknown, **violated}
        self.unsettled &= set(self.active)
        if not self.unsettled:
            self._attempts = 0
        rebalance = {key: r for key, r in violated.items()
                     if r.policy in evaluation.policies and evaluation.policies[r.policy].action is Action.REBALANCE}
        new_keys = {_key(r) for r in new} & set(rebalance)
        waiting = self.unsettled & set(rebalance)
        if new_keys or (waiting and self.clock() >= self._retry_at_seconds):
            # The scheduler plans the whole fleet: every violation still waiting goes with the new ones.
            self._ask(tuple(r for key, r in rebalance.items() if key in new_keys | waiting))

    def _ask(self, violations: tuple[Result, ...]) -> None:
        keys = {_key(r) for r in violations}
        if self.request_rebalance(violations) is RequestOutcome.SETTLED:
            self.unsettled -= keys
            self._attempts = 0
            return
        self.unsettled |= keys
        self._attempts += 1
        delay_seconds = self.backoff.delay_seconds(self._attempts)
        self._retry_at_seconds = self.clock() + delay_seconds
        log.info(json.dumps({"event": "rebalance_retry_scheduled", "retry_in_seconds": delay_seconds,
                             "violations": sorted(f"{p}@{d or m}" for p, d, m in keys)}))

    @staticmethod
    def _log(event: str, result: Result, evaluation: Evaluation, level: int) -> None:
        policy = evaluation.policies.get(result.policy)
        record = result_record(result, policy) if policy is not None else {"policy": result.policy}
        if event == "resolved":
            record = {k: record[k] for k in ("policy", "severity", "device", "model") if k in record}
        log.log(level, json.dumps({"event": event, **record}))
