"""`gpupack rules run --schedule FILE --lead 10m --apply` when a step does not go through: its
moves fail and are rolled back (tried again at the next evaluations, STEP_ATTEMPTS in all), or are
still failing or deferred when the next step comes due (closed as failed, saying so).

Fed at the Triton control boundary as tests/closedloop/test_schedule_follower.py is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from gpupack.closedloop.follower import STEP_ATTEMPTS, ScheduleFollower
from gpupack.scheduler.rebalance.audit import read_audit

from tests.closedloop.test_schedule_follower import (ROOM_FOR_BOTH, START_SECONDS, STEP, follower, metrics, step,
                                                     write_schedule)
from tests.scheduler.rebalance.test_degraded import FakeFleet, rebalancer


def spread_then_gathered(tmp_path: Path) -> tuple[FakeFleet, ScheduleFollower, list[float]]:
    """Server b refuses loads; step 0 spreads the two models over a and b, step 1 gathers them on a."""
    fleet = FakeFleet(a=["large-a", "large-b"], b=[])
    fleet.loads_refused = {"b"}
    schedule = write_schedule(tmp_path, step(0, **{"gpu-1": ["large-a"], "gpu-2": ["large-b"]}),
                              step(1, **{"gpu-1": ["large-a", "large-b"], "gpu-2": []}))
    now = [START_SECONDS]
    return fleet, follower(tmp_path, fleet, schedule, now), now


def test_a_step_whose_loads_fail_is_tried_again_at_the_next_evaluations_then_counted_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet, following, now = spread_then_gathered(tmp_path)
    with caplog.at_level(logging.WARNING):
        following()  # the load on b fails: rolled back, nothing lost, tried again next time
        assert fleet.loaded == {"a": {"large-a", "large-b"}, "b": set()}
        assert "gpupack_schedule_step" not in metrics(following)
        fleet.loads_refused.clear()
        following()
    assert len(fleet.loaded["a"]) == len(fleet.loaded["b"]) == 1
    values = metrics(following)
    assert values["gpupack_schedule_step"] == 0
    assert values['gpupack_schedule_steps_total{"result": "applied"}'] == 1
    assert values['gpupack_schedule_steps_total{"result": "failed"}'] == 0
    (retrying,) = [json.loads(r.getMessage()) for r in caplog.records if "schedule_step_retrying" in r.getMessage()]
    assert retrying["step"] == 0 and retrying["attempt"] == 1 and retrying["attempts"] == STEP_ATTEMPTS

    fleet.loads_refused = {"a"}  # step 1 moves a copy back onto a, which keeps refusing
    now[0] += STEP
    for _ in range(STEP_ATTEMPTS + 2):
        following()
    assert len(fleet.loaded["a"]) == len(fleet.loaded["b"]) == 1
    values = metrics(following)
    assert values["gpupack_schedule_step"] == 1
    assert values['gpupack_schedule_steps_total{"result": "failed"}'] == 1
    assert [e["event"] for e in read_audit(tmp_path / "state" / "audit.jsonl")].count("run_started") == 2 + STEP_ATTEMPTS


def test_a_step_still_failing_when_the_next_comes_due_is_closed_as_failed(tmp_path: Path) -> None:
    fleet, following, now = spread_then_gathered(tmp_path)
    following()  # step 0 fails once
    now[0] += STEP  # step 1 (all on a: nothing to move) comes due before step 0 is tried again
    following()
    values = metrics(following)
    assert values["gpupack_schedule_step"] == 1
    assert values['gpupack_schedule_steps_total{"result": "failed"}'] == 1
    assert values['gpupack_schedule_steps_total{"result": "applied"}'] == 1
    finished = [e for e in read_audit(tmp_path / "state" / "audit.jsonl") if e["event"] == "schedule_step_finished"]
    assert [(e["step"], e["result"]) for e in finished] == [(0, "failed"), (1, "applied")]
    assert finished[0]["error"] == "step 1 came due before the moves of step 0 were all made"


def test_a_step_whose_moves_are_still_deferred_when_the_next_comes_due_is_closed_as_failed(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a", "large-b"], b=[], c=[])
    balancer = rebalancer(tmp_path, fleet, ROOM_FOR_BOTH)
    balancer.settings = replace(balancer.settings, max_moves=1)
    spread = {"gpu-1": ["large-b"], "gpu-2": ["large-a"], "gpu-3": ["large-a"]}  # two moves from a
    schedule = write_schedule(tmp_path, step(0, **spread), step(1, **spread))
    now = [START_SECONDS]
    following = follower(tmp_path, fleet, schedule, now, balancer=balancer)
    following()  # one move of two made, the other deferred to the next evaluation
    assert "schedule_step_finished" not in [e["event"] for e in read_audit(tmp_path / "state" / "audit.jsonl")]
    now[0] += STEP
    following()  # step 1 comes due first: step 0 is closed, and step 1 makes the move left
    finished = [e for e in read_audit(tmp_path / "state" / "audit.jsonl") if e["event"] == "schedule_step_finished"]
    assert [(e["step"], e["result"]) for e in finished][0] == (0, "failed")
    assert finished[0]["error"] == "step 1 came due before the moves of step 0 were all made"
    assert metrics(following)['gpupack_schedule_steps_total{"result": "failed"}'] == 1
