"""A `rebalance` violation keeps asking the scheduler while it lasts if a request did not settle it.

The scheduler is a fake request function answering scripted outcomes; the clock is a variable.
"""

from __future__ import annotations

import json
import logging
from typing import Iterable

import pytest

from gpupack.domain import Resource
from gpupack.rules.evaluator import Result, evaluate
from gpupack.rules.peaks import snapshot_from_json
from gpupack.rules.policy import Action, CapacityPolicy, PolicySet
from gpupack.rules.transitions import RequestOutcome, RetryBackoff, ViolationTracker

RETRY, SETTLED = RequestOutcome.RETRY, RequestOutcome.SETTLED


def policies(max_ratio: float) -> PolicySet:
    """Case study 1: GPU-3 is at 88.1% of its memory, GPU-4 at 88.6%."""
    return PolicySet((CapacityPolicy("gpu-memory", resource=Resource.GPU_MEMORY, max_ratio=max_ratio,
                                     action=Action.REBALANCE),))


class FakeScheduler:
    """Records when and for which devices it was asked; answers the scripted outcomes, then SETTLED."""

    def __init__(self, clock: "Clock", outcomes: Iterable[RequestOutcome] = ()) -> None:
        self.clock, self.outcomes = clock, list(outcomes)
        self.asked: list[tuple[float, list[str]]] = []

    def __call__(self, violations: tuple[Result, ...]) -> RequestOutcome:
        self.asked.append((self.clock.now, [v.device for v in violations]))
        return self.outcomes.pop(0) if self.outcomes else SETTLED

    @property
    def times(self) -> list[float]:
        return [when for when, _ in self.asked]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def run(tracker: ViolationTracker, clock: Clock, document: dict, policy_set: PolicySet, times: Iterable[float]) -> None:
    for when in times:
        clock.now = when
        tracker.update(evaluate(snapshot_from_json(document, "f"), policy_set))


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict]:
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gpupack.rules.transitions"]
    return [r for r in records if r["event"] == name]


def test_a_skipped_request_is_asked_again_after_the_backoff_without_a_second_violation_line(
    seed_document, clock, caplog
):
    caplog.set_level(logging.INFO, logger="gpupack.rules.transitions")
    scheduler = FakeScheduler(clock, [RETRY])
    tracker = ViolationTracker(scheduler, RetryBackoff(first_seconds=60), clock)
    run(tracker, clock, seed_document, policies(0.8), [0, 30, 59, 61, 120, 300])
    assert scheduler.asked == [(0, ["GPU-3", "GPU-4"]), (61, ["GPU-3", "GPU-4"])]  # then settled: quiet
    assert [e["device"] for e in events(caplog, "violation")] == ["GPU-3", "GPU-4"]
    (scheduled,) = events(caplog, "rebalance_retry_scheduled")
    assert scheduled["retry_in_seconds"] == 60 and scheduled["violations"] == ["gpu-memory@GPU-3", "gpu-memory@GPU-4"]


def test_the_backoff_doubles_while_requests_keep_failing_up_to_its_cap(seed_document, clock):
    scheduler = FakeScheduler(clock, [RETRY] * 10)
    tracker = ViolationTracker(scheduler, RetryBackoff(first_seconds=60, max_seconds=150), clock)
    run(tracker, clock, seed_document, policies(0.8), range(0, 500, 10))
    assert scheduler.times == [0, 60, 180, 330, 480]


def test_a_settled_request_is_not_repeated_while_the_violation_lasts(seed_document, clock):
    scheduler = FakeScheduler(clock)
    tracker = ViolationTracker(scheduler, RetryBackoff(first_seconds=1), clock)
    run(tracker, clock, seed_document, policies(0.8), range(0, 100, 10))
    assert scheduler.times == [0]


def test_a_resolved_violation_is_not_retried_and_its_return_asks_at_once(seed_document, clock):
    scheduler = FakeScheduler(clock, [RETRY, RETRY])
    tracker = ViolationTracker(scheduler, RetryBackoff(first_seconds=60), clock)
    run(tracker, clock, seed_document, policies(0.8), [0])
    run(tracker, clock, seed_document, policies(0.95), [10, 100])  # relaxed: both resolve
    assert tracker.unsettled == set()
    run(tracker, clock, seed_document, policies(0.8), [110, 150, 171])
    # Back as a new violation: asked at once, and the back-off starts again from its first step.
    assert scheduler.times == [0, 110, 170 + 1]


def test_a_new_violation_asks_at_once_with_those_still_waiting(seed_document, clock):
    scheduler = FakeScheduler(clock, [RETRY])
    tracker = ViolationTracker(scheduler, RetryBackoff(first_seconds=60), clock)
    run(tracker, clock, seed_document, policies(0.884), [0])  # GPU-4 only
    run(tracker, clock, seed_document, policies(0.8), [10])  # GPU-3 joins before GPU-4's retry is due
    assert scheduler.asked == [(0, ["GPU-4"]), (10, ["GPU-3", "GPU-4"])]


def test_a_waiting_violation_is_not_asked_about_while_its_device_is_unknown(seed_document, clock):
    scheduler = FakeScheduler(clock, [RETRY])
    tracker = ViolationTracker(scheduler, RetryBackoff(first_seconds=60), clock)
    run(tracker, clock, seed_document, policies(0.8), [0])
    seed_document["devices"][3]["stale"] = True  # GPU-4: unknown, still active
    run(tracker, clock, seed_document, policies(0.8), [70])
    assert scheduler.asked[-1] == (70, ["GPU-3"])
    assert ("gpu-memory", "GPU-4", "") in tracker.unsettled
