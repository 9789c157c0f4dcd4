"""`gpupack rules run --schedule FILE --lead 10m`: the loop carries out each step of a schedule ahead
of its start, from the placement live then, with the policies guarding live demand.

Fed at the Triton control boundary (tests/scheduler/rebalance/test_degraded.FakeFleet): each
server its own 448 MiB device ``cpu:<server>``, 160 MiB models, a 64 MiB server baseline.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from prometheus_client import make_wsgi_app

from gpupack.closedloop.follower import ScheduleFollower, following
from gpupack.closedloop.trigger import RebalanceTrigger
from gpupack.closedloop.schedule_file import FollowedSchedule, load_schedule
from gpupack.errors import InputError, UnreachableError
from gpupack.rules.loader import load_policies
from gpupack.rules.loop import Acting, RulesEngine
from gpupack.rules.transitions import ViolationTracker
from gpupack.scheduler.rebalance.audit import read_audit
from gpupack.scheduler.rebalance.inputs import FleetInputs, ProfileInputs
from gpupack.scheduler.rebalance.rebalancer import Rebalancer
from gpupack.scheduler.rebalance.settings import RebalanceSettings
from gpupack.scheduler.rebalance.toward import map_devices
from gpupack.servers import ServerConfig

from tests.conftest import CROWDING_PROFILE, REBALANCE_AT_80_PERCENT
from tests.scheduler.demand.test_schedule import daily_fleet, schedule
from tests.scheduler.rebalance.test_degraded import FakeFleet, rebalancer

MIB = 2**20
START = "2026-12-07T00:00:00Z"
START_SECONDS = 1796601600.0  # START as epoch seconds
STEP = 60.0


def step(k: int, **devices: list[str]) -> dict:
    return {"step": k, "device_count": len(devices), "moves": [],
            "devices": [{"name": name, "copies": [{"model": m, "config": "profiled", "rate_per_second": 1.0}
                                                  for m in models]} for name, models in devices.items()]}


def write_schedule(tmp_path: Path, *steps: dict, start: str | None = START, name: str = "schedule.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"step_seconds": STEP, "steps": len(steps), "start": start, "schedule": list(steps)}))
    return path


@pytest.mark.parametrize(("change", "message"), [
    ({"start": None}, "schedule.json: start: missing: when step 0 begins. Give the demand series a start:"),
    ({"start": "2026-12-07T00:00:00"}, "schedule.json: start: 2026-12-07T00:00:00 has no zone"),
    ({"start": "tomorrow"}, "schedule.json: start: 'tomorrow' is not an RFC 3339 timestamp"),
    ({"step_seconds": 0}, "schedule.json: step_seconds: must be a number of seconds above 0"),
    ({"schedule": [step(0, a=["large-a"]), step(2, a=["large-a"])]}, "schedule[1].step: step must be 1"),
    ({"schedule": [{"step": 0, "devices": [{"name": "g", "copies": [{"model": "x", "config": "c"}]}]}]},
     "schedule[0].devices[0].copies[0].rate_per_second: must be a rate per second"),
    ({"schedule": [{"step": 0, "devices": {"g": []}}]}, "schedule[0].devices: must be a list of devices"),
])
def test_a_bad_schedule_is_refused_naming_the_file_and_the_field(tmp_path: Path, change: dict, message: str) -> None:
    document = {"step_seconds": STEP, "start": START, "schedule": [step(0, a=["large-a"])], **change}
    (tmp_path / "schedule.json").write_text(json.dumps(document))
    with pytest.raises(InputError) as refused:
        load_schedule(tmp_path / "schedule.json")
    assert message in str(refused.value)


def test_a_schedule_reads_its_start_in_any_zone_as_the_same_moment(tmp_path: Path) -> None:
    utc = load_schedule(write_schedule(tmp_path, step(0, a=["large-a"])))
    paris = load_schedule(write_schedule(tmp_path, step(0, a=["large-a"]), start="2026-12-07T01:00:00+01:00",
                                         name="paris.json"))
    assert utc.start_seconds == paris.start_seconds == START_SECONDS
    assert utc.steps[0].devices == {"a": (utc.steps[0].devices["a"][0],)}
    assert utc.steps[0].devices["a"][0].model == "large-a"


def test_the_schedule_plan_writes_is_the_schedule_the_loop_reads(tmp_path: Path, capsys) -> None:
    profile, series = daily_fleet(tmp_path)
    Path(series).write_text(Path(series).read_text().replace("step: 6h\n", f"step: 6h\nstart: {START}\n"))
    status, document, _ = schedule(capsys, profile, series)
    assert status == 0
    (tmp_path / "week.json").write_text(json.dumps(document))
    followed = load_schedule(tmp_path / "week.json")
    assert (followed.start_seconds, followed.step_seconds, len(followed.steps)) == (START_SECONDS, 6 * 3600.0, 4)
    busiest = followed.steps[0]
    assert len(busiest.devices) == document["schedule"][0]["device_count"]
    assert {c.model for copies in busiest.devices.values() for c in copies} == {
        "east0", "east1", "east2", "west0", "west1", "west2"}


def test_the_step_due_is_the_one_that_starts_within_the_lead() -> None:
    schedule = FollowedSchedule("schedule.json", 1000.0, 60.0, (), "")
    assert schedule.due(999.0, 0.0) == -1  # before the schedule
    assert schedule.due(1000.0, 0.0) == 0
    assert schedule.due(1049.0, 10.0) == 0  # step 1 begins at 1060: not yet within 10 s
    assert schedule.due(1050.0, 10.0) == 1  # now it is
    assert schedule.due(1119.0, 600.0) == 11 and schedule.due(1120.0, 600.0) == 12
    assert schedule.start_of(2) == 1120.0


def test_the_scheduled_devices_map_onto_the_live_ones_that_hold_their_models() -> None:
    live = {"cpu:a": frozenset({"m1", "m2"}), "cpu:b": frozenset({"m3"}), "cpu:c": frozenset()}
    wanted = {"gpu-1": frozenset({"m3", "m4"}), "gpu-2": frozenset({"m1"}), "gpu-3": frozenset({"m2"})}
    assert map_devices(wanted, live) == {"gpu-1": "cpu:b", "gpu-2": "cpu:a", "gpu-3": "cpu:c"}
    assert map_devices({**wanted, "gpu-4": frozenset({"m5"})}, live) is None  # four devices wanted, three answer
    assert map_devices({**wanted, "gpu-4": frozenset()}, live) is not None  # an empty device needs none


# Both large models fit one device (384 MiB of 448): the schedule, not a policy, decides where they go.
ROOM_FOR_BOTH = "policies:\n  - {name: gpu-memory-95, resource: gpu_memory, max: 95%, action: rebalance}\n"


def follower(tmp_path: Path, fleet: FakeFleet, schedule: Path, now: list[float], lead_seconds: float = 10.0,
             balancer: Rebalancer | None = None) -> ScheduleFollower:
    balancer = balancer or rebalancer(tmp_path, fleet, ROOM_FOR_BOTH)
    return ScheduleFollower(load_schedule(schedule), balancer, lambda: balancer.policies, lead_seconds, apply=True,
                            clock=lambda: now[0])


def metrics(follower: ScheduleFollower) -> dict[str, float]:
    return {f"{s.name}{json.dumps(s.labels, sort_keys=True) if s.labels else ''}": s.value
            for family in follower.collect() for s in family.samples}


def test_each_step_is_carried_out_once_its_lead_before_it_begins_keeping_copies_in_place(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a", "large-b"], b=[], c=[])
    schedule = write_schedule(tmp_path, step(0, **{"gpu-1": ["large-a", "large-b"]}),
                              step(1, **{"gpu-1": ["large-b"], "gpu-2": ["large-a"]}))
    now = [START_SECONDS + 1.0]
    following = follower(tmp_path, fleet, schedule, now)
    following()  # step 0 holds already: nothing moves
    assert fleet.loaded == {"a": {"large-a", "large-b"}, "b": set(), "c": set()}
    assert metrics(following)["gpupack_schedule_step"] == 0
    assert metrics(following)["gpupack_schedule_next_step_start_timestamp_seconds"] == START_SECONDS + STEP

    now[0] = START_SECONDS + STEP - 11.0
    following()  # step 1 is not within the 10 s lead yet
    assert fleet.loaded["a"] == {"large-a", "large-b"}
    now[0] = START_SECONDS + STEP - 10.0
    following()
    # large-b stays where it is (gpu-1 is cpu:a); only large-a moves, to a device that held nothing
    assert fleet.loaded["a"] == {"large-b"} and fleet.loaded["b"] | fleet.loaded["c"] == {"large-a"}
    audit = [e["event"] for e in read_audit(tmp_path / "state" / "audit.jsonl")]
    assert audit == ["schedule_step_started", "schedule_step_finished",  # step 0: nothing to move
                     "schedule_step_started", "run_started", "step_started", "target_ready", "source_unloaded",
                     "step_succeeded", "run_finished", "schedule_step_finished"]
    values = metrics(following)
    assert values["gpupack_schedule_step"] == 1
    assert values['gpupack_schedule_steps_total{"result": "applied"}'] == 2
    assert "gpupack_schedule_next_step_start_timestamp_seconds" not in values  # no step left


def test_a_restarted_engine_does_not_redo_a_step_and_says_once_that_the_schedule_ended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = FakeFleet(a=["large-a", "large-b"], b=[])
    schedule = write_schedule(tmp_path, step(0, **{"gpu-1": ["large-a"], "gpu-2": ["large-b"]}))
    now = [START_SECONDS]
    follower(tmp_path, fleet, schedule, now)()
    assert len(fleet.loaded["a"]) == len(fleet.loaded["b"]) == 1
    fleet.loaded = {"a": {"large-a", "large-b"}, "b": set()}  # moved back by hand
    restarted = follower(tmp_path, fleet, schedule, now)
    restarted()
    assert fleet.loaded == {"a": {"large-a", "large-b"}, "b": set()}  # the step was carried out already
    now[0] += STEP
    with caplog.at_level(logging.INFO):
        restarted()
        restarted()
    assert sum('"event": "schedule_finished"' in r.getMessage() for r in caplog.records) == 1


def test_a_step_needing_more_devices_than_answer_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = FakeFleet(a=["large-a", "large-b"], b=[])
    schedule = write_schedule(tmp_path, step(0, **{"gpu-1": ["large-a"], "gpu-2": ["large-b"], "gpu-3": []}),
                              step(1, **{"gpu-1": ["large-a"], "gpu-2": ["large-b"], "gpu-3": ["large-a"]}))
    now = [START_SECONDS + STEP]
    following = follower(tmp_path, fleet, schedule, now)
    with caplog.at_level(logging.WARNING):
        following()
        following()
    (skipped,) = [json.loads(r.getMessage()) for r in caplog.records if "schedule_step_skipped" in r.getMessage()]
    assert skipped["step"] == 1 and skipped["reason"] == "the step needs 3 devices; 2 devices of managed servers answer"
    assert metrics(following)['gpupack_schedule_steps_total{"result": "skipped"}'] == 1
    assert fleet.loaded == {"a": {"large-a", "large-b"}, "b": set()}


def test_a_step_due_while_the_peaks_do_not_answer_waits_for_them(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a", "large-b"], b=[])
    (tmp_path / "profile.yaml").write_text(CROWDING_PROFILE)
    (tmp_path / "policies.yaml").write_text(ROOM_FOR_BOTH)
    servers = [ServerConfig(name, f"http://{name}:8000") for name in ("a", "b")]
    profile, answering = ProfileInputs(str(tmp_path / "profile.yaml"), servers, 448 * MIB), [False]

    def peaks() -> FleetInputs:
        if not answering[0]:
            raise UnreachableError("the exporter", "http://127.0.0.1:9478", "connection refused")
        return profile()

    balancer = Rebalancer(servers, peaks, load_policies(tmp_path / "policies.yaml"),
                          RebalanceSettings(state_dir=tmp_path / "state", drain_seconds=0.0, cooldown_seconds=0.0),
                          control=fleet.control)
    schedule = write_schedule(tmp_path, step(0, **{"gpu-1": ["large-a"], "gpu-2": ["large-b"]}))
    following = follower(tmp_path, fleet, schedule, [START_SECONDS], balancer=balancer)
    following()
    assert fleet.loaded == {"a": {"large-a", "large-b"}, "b": set()}
    assert "gpupack_schedule_step" not in metrics(following)
    answering[0] = True
    following()
    assert len(fleet.loaded["a"]) == len(fleet.loaded["b"]) == 1
    assert metrics(following)['gpupack_schedule_steps_total{"result": "applied"}'] == 1


def test_a_dry_run_logs_each_step_once_and_moves_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fleet = FakeFleet(a=["large-a", "large-b"], b=[])
    schedule = write_schedule(tmp_path, step(0, **{"gpu-1": ["large-a"], "gpu-2": ["large-b"]}))
    balancer = rebalancer(tmp_path, fleet, ROOM_FOR_BOTH)
    dry = ScheduleFollower(load_schedule(schedule), balancer, lambda: balancer.policies, 0.0, apply=False,
                           clock=lambda: START_SECONDS)
    with caplog.at_level(logging.WARNING):
        dry()
        dry()
    (planned,) = [json.loads(r.getMessage()) for r in caplog.records if "schedule_step_" in r.getMessage()]
    assert planned["event"] == "schedule_step_planned" and planned["dry_run"]
    assert [(s["kind"], s["source"], s["target"]) for s in planned["steps"]] == [("move", "cpu:a", "cpu:b")]
    assert fleet.loaded == {"a": {"large-a", "large-b"}, "b": set()}
    assert not (tmp_path / "state" / "schedule.json").exists()


THROUGHPUT_PROFILE = """\
server_baseline: {peak_gpu_memory_bytes: 64MiB}
models:
  - {model: small, peak_gpu_memory_bytes: 48MiB, throughput_per_second: 10}
"""
SERVE_DEMAND = "policies:\n  - {name: serve-demand, resource: throughput, min: 100%, action: rebalance}\n"


def test_live_demand_above_the_forecast_is_served_the_step_replanned_under_the_throughput_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The schedule forecast 8/s (one copy of 10/s); 15/s arrive: the step keeps its shape but the
    policy's second copy is placed, rather than the schedule's single copy followed blindly."""
    fleet = FakeFleet(a=["small"], b=[])
    (tmp_path / "profile.yaml").write_text(THROUGHPUT_PROFILE)
    (tmp_path / "policies.yaml").write_text(SERVE_DEMAND)
    servers = [ServerConfig(name, f"http://{name}:8000") for name in ("a", "b")]
    profile = ProfileInputs(str(tmp_path / "profile.yaml"), servers, 448 * MIB)
    balancer = Rebalancer(servers, lambda: replace(profile(), demand_per_second={"small": 15.0}),
                          load_policies(tmp_path / "policies.yaml"),
                          RebalanceSettings(state_dir=tmp_path / "state", drain_seconds=0.0, cooldown_seconds=0.0),
                          control=fleet.control)
    schedule = write_schedule(tmp_path, step(0, **{"gpu-1": ["small"]}))
    following = follower(tmp_path, fleet, schedule, [START_SECONDS], balancer=balancer)
    with caplog.at_level(logging.WARNING):
        following()
    assert fleet.loaded == {"a": {"small"}, "b": {"small"}}
    (replanned,) = [json.loads(r.getMessage()) for r in caplog.records if "schedule_step_replanned" in r.getMessage()]
    assert replanned["replanned_because"] == ["serve-demand"]
    assert metrics(following)['gpupack_schedule_steps_total{"result": "replanned"}'] == 1


def test_while_a_schedule_is_followed_the_throughput_policy_still_guards_live_demand(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop as `rules run --schedule --apply` wires it: live demand (15/s) above what the step
    places (one copy of 10/s) is a violation the guard answers with a second copy, and the step,
    due in the same evaluation, is re-planned around it instead of unloading it."""
    fleet = FakeFleet(a=["small"], b=[])
    (tmp_path / "profile.yaml").write_text(THROUGHPUT_PROFILE)
    (tmp_path / "policies.yaml").write_text(SERVE_DEMAND)
    servers = [ServerConfig(name, f"http://{name}:8000") for name in ("a", "b")]
    profile = ProfileInputs(str(tmp_path / "profile.yaml"), servers, 448 * MIB)

    def inputs() -> FleetInputs:
        return replace(profile(), demand_per_second={"small": 15.0})

    policies = load_policies(tmp_path / "policies.yaml")
    balancer = Rebalancer(servers, inputs, policies, RebalanceSettings(
        state_dir=tmp_path / "state", drain_seconds=0.0, cooldown_seconds=0.0), control=fleet.control)
    acting = following(Acting(RebalanceTrigger(balancer, lambda: policies, apply=True), balancer.refresh_placement,
                              lambda registry: make_wsgi_app(registry)),
                       follower(tmp_path, fleet, write_schedule(tmp_path, step(0, **{"gpu-1": ["small"]})),
                                [START_SECONDS], balancer=balancer))
    engine = RulesEngine(lambda: inputs().snapshot(balancer.refresh_placement()), lambda: policies,
                         tracker=ViolationTracker(acting.request_rebalance), refresh_placement=acting.refresh_placement)
    with caplog.at_level(logging.WARNING):
        engine.evaluate_once()
    events = [json.loads(r.getMessage())["event"] for r in caplog.records if r.getMessage().startswith("{")]
    assert events == ["violation", "rebalance_applied", "schedule_step_replanned"]
    assert fleet.loaded == {"a": {"small"}, "b": {"small"}}


def test_schedule_without_servers_or_without_a_start_exits_2_before_the_loop_starts(tmp_path: Path) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(REBALANCE_AT_80_PERCENT)
    good = write_schedule(tmp_path, step(0, a=["large-a"]))
    unanchored = write_schedule(tmp_path, step(0, a=["large-a"]), start=None, name="unanchored.json")
    for extra, message in ((["--schedule", str(good)], "--schedule needs Triton servers"),
                           (["--schedule", str(unanchored), "--server", "a=http://127.0.0.1:1"],
                            f"{unanchored}: start: missing"),
                           (["--schedule", str(good), "--server", "a=http://127.0.0.1:1", "--lead=-1m"],
                            "--lead: '-1m' is not a number")):
        result = subprocess.run([sys.executable, "-m", "gpupack", "rules", "run", "--policies", str(policies),
                                 "--state-dir", str(tmp_path / "state"), *extra],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_schedule_and_its_lead_come_from_the_rules_section_of_the_config_file(tmp_path: Path) -> None:
    unanchored = write_schedule(tmp_path, step(0, a=["large-a"]), start=None)
    config = tmp_path / "gpupack.yaml"
    config.write_text(f"rules:\n  policies: {tmp_path / 'policies.yaml'}\n  schedule: {unanchored}\n  lead: soon\n"
                      "  servers: [{name: a, url: 'http://127.0.0.1:1'}]\n")
    (tmp_path / "policies.yaml").write_text(REBALANCE_AT_80_PERCENT)
    result = subprocess.run([sys.executable, "-m", "gpupack", "--config", str(config), "rules", "run"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"{config}:4: rules.lead: 'soon'" in result.stderr
    config.write_text(config.read_text().replace("lead: soon", "lead: 5m"))
    result = subprocess.run([sys.executable, "-m", "gpupack", "--config", str(config), "rules", "run",
                             "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"{unanchored}: start: missing" in result.stderr
