"""`gpupack plan --demand ... --verify`: plan, replay each device, forbid the groups that failed,
re-plan, until every device passes or the time limit ends. The verifier here is a small fake of
our own Verifier protocol that fails any device holding a given pair together; the real one
(the profiler's, on Triton) is exercised in the profiler's tests and bench/colocation.py."""

import argparse
import json

import pytest

from gpupack.app.cli import build_parser
from gpupack.scheduler import plan_cli
from gpupack.scheduler.packing.problem import InfeasibleError
from gpupack.scheduler.verify_loop import (
    EVERY_DEVICE_PASSED, NOTHING_TO_LEARN, NO_PLAN, TIME_LIMIT, Verification, verify_plan,
)
from gpupack.timing import Deadline
from gpupack.verification import DeviceVerdict, ModelVerdict, PlannedCopy, PlannedDevice

PROFILE = """\
server_baseline: {peak_gpu_memory_bytes: 0}
models:
""" + "".join(f"""\
  - model: {name}
    peak_gpu_memory_bytes: 2GiB
    configs:
      - name: only
        peak_gpu_memory_bytes: 2GiB
        points:
          - {{throughput_per_second: 100, latency_p99_seconds: 20ms, peak_gpu_utilization_ratio: 20%}}
""" for name in ("a", "b", "c"))
DEMAND = """\
demand:
  - {model: a, rate_per_second: 50, latency_p99_seconds: 50ms}
  - {model: b, rate_per_second: 50, latency_p99_seconds: 50ms}
  - {model: c, rate_per_second: 50, latency_p99_seconds: 50ms}
"""


class PairFails:
    """Fails every device holding all of one of ``pairs``, as a core-limited server would."""

    def __init__(self, *pairs: frozenset[str]):
        self.pairs = pairs
        self.replayed: list[PlannedDevice] = []

    def verify(self, devices):
        verdicts = []
        for device in devices:
            self.replayed.append(device)
            here = {c.model for c in device.copies}
            broken = any(p <= here for p in self.pairs)
            models = tuple(ModelVerdict(c.model, c.rate_per_second, c.rate_per_second,
                                        0.2 if broken else 0.01, c.budget_seconds, not broken,
                                        "p99 0.2 s over its 0.05 s budget" if broken else "")
                           for c in device.copies)
            verdicts.append(DeviceVerdict(device.name, not broken, device.predicted, {}, models))
        return verdicts


class AfterCalls(Deadline):
    """A deadline that passes once the verifier has replayed ``calls`` devices: time without waiting."""

    def __init__(self, verifier: PairFails, calls: int):
        super().__init__(0.0)
        object.__setattr__(self, "verifier", verifier)
        object.__setattr__(self, "calls", calls)

    def passed(self) -> bool:
        return len(self.verifier.replayed) >= self.calls


def device(name, *models):
    return PlannedDevice(name, tuple(PlannedCopy(m, "only", 10.0, 0.05) for m in models))


def packer(forbidden):
    """A planner for a, b and c: the fewest devices with no forbidden group whole on one."""
    partitions = [["abc"], ["ab", "c"], ["ac", "b"], ["a", "bc"], ["a", "b", "c"]]
    for partition in partitions:
        if not any(g <= set(block) for block in partition for g in forbidden):
            return [device(f"gpu-{k}", *block) for k, block in enumerate(partition, start=1)]
    raise InfeasibleError("every partition holds a forbidden group")


def test_a_failed_device_is_shrunk_to_the_pair_that_breaks_it_and_the_next_round_passes():
    verifier = PairFails(frozenset("ab"))
    lines = []
    outcome = verify_plan(packer, lambda plan: plan, verifier, Deadline.after(60), progress=lines.append)
    assert outcome.stopped == EVERY_DEVICE_PASSED and outcome.every_device_verified
    # a, b, c fail together; without a, or without b, they pass; without c they fail: a + b it is.
    assert outcome.forbidden_groups == (frozenset("ab"),)
    assert [len(r.verdicts) for r in outcome.rounds] == [1, 2]
    assert outcome.rounds[0].learned == (frozenset("ab"),) and outcome.rounds[1].learned == ()
    assert outcome.verified == {"gpu-1": True, "gpu-2": True}
    # round 2 is a + c (replayed while shrinking: remembered) and b (new)
    assert [r.replayed for r in outcome.rounds] == [4, 1]
    assert any("learned: never a + b on one device" in line for line in lines)
    assert any("gpu-1 without c: failed" in line for line in lines)


def test_a_device_already_replayed_keeps_its_verdict_without_replaying():
    verifier = PairFails(frozenset("ab"), frozenset("ac"))
    outcome = verify_plan(packer, lambda p: p, verifier, Deadline.after(60))
    assert outcome.stopped == EVERY_DEVICE_PASSED
    # round 1: a+b+c fails, b+c passes, a+c fails: a + c learned; round 2: a+b fails, c passes;
    # round 3: a (new) and b+c (replayed while shrinking in round 1: remembered)
    assert [r.replayed for r in outcome.rounds] == [3, 2, 1]
    assert [len(r.verdicts) for r in outcome.rounds] == [1, 2, 2]
    assert outcome.forbidden_groups == (frozenset("ac"), frozenset("ab"))
    assert outcome.verified == {"gpu-1": True, "gpu-2": True}


def test_a_model_that_fails_alone_ends_the_loop_unverified_without_forbidding_it():
    verifier = PairFails(frozenset("a"))
    outcome = verify_plan(lambda f: [device("gpu-1", "a"), device("gpu-2", "b")], lambda p: p, verifier,
                          Deadline.after(60))
    assert outcome.stopped.startswith(NOTHING_TO_LEARN) and "gpu-1" in outcome.stopped
    assert outcome.verified == {"gpu-1": False, "gpu-2": True} and not outcome.every_device_verified
    assert outcome.forbidden_groups == ()


def test_the_time_limit_ends_the_loop_and_devices_not_replayed_are_not_verified():
    verifier = PairFails(frozenset("ab"))
    outcome = verify_plan(packer, lambda p: p, verifier, AfterCalls(verifier, 4))
    # round 1 replays a+b+c and three smaller groups, learns a + b, and the limit has passed: no re-plan
    assert outcome.stopped == TIME_LIMIT and len(outcome.rounds) == 1
    assert outcome.verified == {"gpu-1": False} and outcome.forbidden_groups == ()
    idle = PairFails()
    outcome = verify_plan(lambda f: [device("gpu-1", "a"), device("gpu-2", "b")], lambda p: p, idle, AfterCalls(idle, 1))
    assert outcome.stopped == TIME_LIMIT and outcome.verified == {"gpu-1": True, "gpu-2": False}


def test_when_no_plan_keeps_the_groups_apart_the_last_plan_stands_unverified():
    def plan(forbidden):
        if forbidden:
            raise InfeasibleError("only one device")
        return [device("gpu-1", "a", "b")]

    outcome = verify_plan(plan, lambda p: p, PairFails(frozenset("ab")), Deadline.after(60))
    assert outcome.stopped.startswith(NO_PLAN) and outcome.verified == {"gpu-1": False}


def _args(tmp_path, *extra):
    (tmp_path / "profile.yaml").write_text(PROFILE)
    (tmp_path / "demand.yaml").write_text(DEMAND)
    parser = build_parser("plan", all_commands=False)
    return parser.parse_args(["plan", "--profile", str(tmp_path / "profile.yaml"), "--device-memory", "16GiB",
                              "--demand", str(tmp_path / "demand.yaml"), "--time-limit", "5s", *extra]).__dict__


def run_plan(tmp_path, verifier, *extra):
    args = argparse.Namespace(**_args(tmp_path, *extra))
    return plan_cli.run(args, None, Verification(verifier, 60.0, "on a fake server"))


def test_plan_verify_separates_the_failing_pair_and_says_so_in_its_json(tmp_path, capsys):
    verifier = PairFails(frozenset("ab"))
    status = run_plan(tmp_path, verifier, "--format", "json")
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert status == 0
    assert document["device_count"] == 2
    assert all(d["verified"] for d in document["devices"])
    for d in document["devices"]:
        assert not {"a", "b"} <= {c["model"] for c in d["copies"]}
    assert [len(r["devices"]) for r in document["verification_rounds"]] == [1, 2]
    assert document["verification_rounds"][0]["learned"] == [["a", "b"]]
    assert document["verification_rounds"][0]["devices"][0]["passed"] is False
    assert document["verification_stopped"] == EVERY_DEVICE_PASSED
    assert "baselines" in document and "models" in document  # the plan's JSON is otherwise unchanged
    assert "round 1: 1 device, 0 passed, 1 failed" in err
    # every copy is replayed at the rate the plan sends it, with its budget
    assert {(c.model, c.rate_per_second, c.budget_seconds) for c in verifier.replayed[0].copies} == {
        ("a", 50.0, 0.05), ("b", 50.0, 0.05), ("c", 50.0, 0.05)}


def test_plan_verify_exits_1_and_prints_the_rounds_when_a_device_still_fails(tmp_path, capsys):
    status = run_plan(tmp_path, PairFails(frozenset("a")))
    out, _ = capsys.readouterr()
    assert status == 1
    assert ("Verified on a fake server: 2 rounds, stopped: a failing device cannot be split further "
            "(gpu-1 fails with one model alone).") in out
    assert "round 1: 1 device (3 replayed), failed: gpu-1 (a + b + c); never again on one device: a + c" in out
    assert "not verified: gpu-1" in out


def test_plan_verify_without_demand_is_refused_as_bad_input(tmp_path):
    args = _args(tmp_path)
    args["demand"] = None
    with pytest.raises(Exception, match="--verify replays each copy"):
        plan_cli.run(argparse.Namespace(**args), None, Verification(PairFails(), 60.0, "x"))
