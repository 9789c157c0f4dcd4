"""From one evaluation to the next: a log line per new violation and per resolution, and a
rebalance request when a ``rebalance`` policy is newly violated.

``unknown`` resolves nothing: a violation whose policy and device cannot be judged now stays
active until a real evaluation says it is over.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

from gpupack.rules.evaluator import Evaluation, Result, Status
from gpupack.rules.policy import Action
from gpupack.rules.report import result_record

log = logging.getLogger(__name__)

ViolationKey = tuple[str, str, str]  # policy, device, model
RebalanceRequest = Callable[[tuple[Result, ...]], None]


def log_rebalance_request(violations: tuple[Result, ...]) -> None:
    """The default until a scheduler is plugged in: say what would be asked for."""
    targets = sorted({f"{v.policy}@{v.device or v.model}" for v in violations})
    log.warning(json.dumps({"event": "rebalance_requested", "violations": targets}))


def _key(result: Result) -> ViolationKey:
    return (result.policy, result.device, result.model)


class ViolationTracker:
    def __init__(self, request_rebalance: RebalanceRequest = log_rebalance_request) -> None:
        self.request_rebalance = request_rebalance
        self.active: dict[ViolationKey, Result] = {}

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
        to_rebalance = tuple(r for r in new
                             if r.policy in evaluation.policies and evaluation.policies[r.policy].action is Action.REBALANCE)
        if to_rebalance:
            self.request_rebalance(to_rebalance)

    @staticmethod
    def _log(event: str, result: Result, evaluation: Evaluation, level: int) -> None:
        policy = evaluation.policies.get(result.policy)
        record = result_record(result, policy) if policy is not None else {"policy": result.policy}
        if event == "resolved":
            record = {k: record[k] for k in ("policy", "severity", "device", "model") if k in record}
        log.log(level, json.dumps({"event": event, **record}))
