"""`gpupack rules run --schedule FILE --lead 20s --apply` on two CPU-only Triton servers: a step that
splits two models across the servers is carried out before it begins, make-before-break.

t0 holds large-a and large-b (160 MiB each, on 448 MiB devices), t1 nothing; the exporter measures
both. The schedule's step 0 is that placement; step 1, starting 28 s after the engine, puts large-b
on a device of its own. The only policy alerts, so the schedule alone moves anything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gpupack.demand_series import format_timestamp
from gpupack.scheduler.rebalance.audit import read_audit

from tests.closedloop.test_schedule_follower import step
from tests.exporter.conftest import crowded_pair, exporter_factory  # noqa: F401 - fixtures
from tests.rules.conftest import wait_for, write_policies
from tests.rules.test_rules_rebalance_loop import rules_process  # noqa: F401 - fixture

STEP_SECONDS = 30.0
LEAD_SECONDS = 20.0
ALERT_ONLY = "policies:\n  - {name: gpu-memory-full, resource: gpu_memory, max: 100%, action: alert}\n"


@pytest.mark.triton
def test_the_loop_carries_out_the_next_step_ahead_of_its_start_loading_before_unloading(
    crowded_pair, rules_process, tmp_path: Path  # noqa: F811 - fixture
) -> None:
    t0, t1, exporter = crowded_pair()
    wait_for(f"{exporter.url}/api/v1/peaks", '"large-b"', timeout_seconds=20)  # measured before anything moves
    # Step 1 begins in 28 s; with a 20 s lead it is due in 8 s, after the engine has carried out step 0.
    start = time.time() - 2.0
    (tmp_path / "schedule.json").write_text(json.dumps({
        "step_seconds": STEP_SECONDS, "start": format_timestamp(start), "schedule": [
            step(0, **{"gpu-1": ["large-a", "large-b"]}),
            step(1, **{"gpu-1": ["large-a"], "gpu-2": ["large-b"]})]}))
    engine = rules_process(
        "--policies", str(write_policies(tmp_path, ALERT_ONLY)), "--exporter-url", exporter.url,
        "--server", f"t0={t0.http_url}", "--server", f"t1={t1.http_url}", "--state-dir", str(tmp_path / "state"),
        "--drain", "0.2s", "--cooldown", "0s", "--schedule", str(tmp_path / "schedule.json"),
        "--lead", f"{LEAD_SECONDS:g}s", "--apply")

    body = wait_for(engine.metrics, "gpupack_schedule_step 1.0", timeout_seconds=STEP_SECONDS)
    assert 'gpupack_schedule_steps_total{result="applied"} 2.0' in body
    assert "gpupack_schedule_next_step_start_timestamp_seconds" not in body  # no step left
    assert t0.ready_models() == ["large-a"] and t1.ready_models() == ["large-b"]
    assert 'gpupack_model_placement{device="cpu:t1",model="large-b",server="t1",version="1"} 1.0' in body
    assert engine.stop() == 0

    audit = read_audit(tmp_path / "state" / "audit.jsonl")
    events = [(e["event"], e.get("step"), e.get("server")) for e in audit]
    started = next(e for e in audit if e["event"] == "schedule_step_started" and e["step"] == 1)
    finished = next(e for e in audit if e["event"] == "schedule_step_finished" and e["step"] == 1)
    assert start + STEP_SECONDS - LEAD_SECONDS <= started["time_seconds"]  # not before its lead
    assert finished["time_seconds"] < start + STEP_SECONDS, "step 1 was not carried out before it began"
    assert finished["result"] == "applied"
    move = "move large-b cpu:t0 -> cpu:t1"
    assert events.index(("target_ready", move, "t1")) < events.index(("source_unloaded", move, "t0"))
    held, split = engine.events("schedule_step_applied")
    assert (held["step"], held["steps"]) == (0, [])  # step 0 held already: nothing moved
    assert split["step"] == 1 and split["target"] == {"large-a": ["cpu:t0"], "large-b": ["cpu:t1"]}
