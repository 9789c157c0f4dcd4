"""`rebalance --verify-on URL`: every target device whose models change is replayed on the canary
before any move, and one failing device refuses the plan."""

from gpupack.domain import Placement
from gpupack.scheduler.rebalance.verify_gate import changed_devices, verify_targets
from gpupack.verification import DeviceVerdict, ModelVerdict

CURRENT = Placement({"a": ("gpu-1",), "b": ("gpu-2",), "c": ("gpu-3",)})
TARGET = Placement({"a": ("gpu-1",), "b": ("gpu-1", "gpu-2"), "c": ("gpu-3",)})


class FailsWith:
    def __init__(self, pair):
        self.pair, self.replayed = set(pair), []

    def verify(self, devices):
        self.replayed += devices
        out = []
        for d in devices:
            broken = self.pair <= {c.model for c in d.copies}
            out.append(DeviceVerdict(d.name, not broken, {}, {}, tuple(
                ModelVerdict(c.model, c.rate_per_second, c.rate_per_second, 0.3 if broken else 0.01, None, not broken,
                             "p99 0.3 s over its 0.1 s budget" if broken else "") for c in d.copies)))
        return out


def test_only_devices_whose_models_change_are_replayed_each_copy_at_its_share_of_the_rate():
    devices = changed_devices(CURRENT, TARGET, {"a": 10.0, "b": 40.0})
    assert [d.name for d in devices] == ["gpu-1"]  # gpu-2 keeps b, gpu-3 keeps c: already serving
    assert {(c.model, c.rate_per_second) for c in devices[0].copies} == {("a", 10.0), ("b", 20.0)}


def test_a_failing_target_device_refuses_the_plan_and_says_nothing_moved():
    verdict = verify_targets(CURRENT, TARGET, {"a": 10.0, "b": 40.0}, FailsWith("ab"))
    assert not verdict.passed
    lines = verdict.lines("http://canary:8000")
    assert lines[-1] == "refused: 1 target device failed on http://canary:8000 (gpu-1); nothing moved"
    assert "b p99 0.3 s over its 0.1 s budget" in lines[1]


def test_targets_that_coexist_pass_and_a_plan_that_changes_nothing_replays_nothing():
    assert verify_targets(CURRENT, TARGET, {"a": 10.0, "b": 40.0}, FailsWith("bc")).passed
    idle = FailsWith("ab")
    assert verify_targets(CURRENT, CURRENT, {}, idle).passed and idle.replayed == []
