"""`gpupack plan --demand --latency-aware`: a device is full for a model when its p99, estimated at
the load the device reaches (M/G/1: every request waits for the work ahead of it, which grows as
1 / (1 - utilisation)), would exceed its budget, though the utilisations add up to less than 100%."""

import json
import math

import pytest

from gpupack.app.cli import main
from gpupack.demand import ModelDemand
from gpupack.domain import Device, ModelFootprint, Resource
from gpupack.model_configs import ConfigPoint, ModelConfig
from gpupack.profiles import Profile
from gpupack.scheduler.demand.latency import Load, latency_copy, p99_without_queueing
from gpupack.scheduler.demand.plan import plan_for_demand
from gpupack.scheduler.packing.problem import PlacementProblem

MEM, UTIL = Resource.GPU_MEMORY, Resource.GPU_UTILIZATION
# One point: 100/s at half the device (5 ms a request), p99 40 ms.
CONFIG = ModelConfig("only", 1e9, (ConfigPoint(100.0, {UTIL: 0.5}, latency_p99_seconds=0.04),))
PROFILE = """\
server_baseline: {peak_gpu_memory_bytes: 0}
models:
""" + "".join(f"""\
  - model: {name}
    peak_gpu_memory_bytes: 1GiB
    configs:
      - name: only
        peak_gpu_memory_bytes: 1GiB
        points:
          - {{throughput_per_second: 100, latency_p99_seconds: 40ms, peak_gpu_utilization_ratio: 50%}}
""" for name in ("a", "b"))


def test_the_p99_without_queueing_is_read_off_the_most_pessimistic_point():
    config = ModelConfig("c", 1e9, (ConfigPoint(10.0, {UTIL: 0.2}, latency_p99_seconds=0.05),
                                    ConfigPoint(20.0, {UTIL: 0.4}, latency_p99_seconds=0.08),
                                    ConfigPoint(30.0, {}, latency_p99_seconds=1.0)))  # no utilisation: no reading
    k = math.log(100)
    # 20/s at 40%: 20 ms a request, a mean wait of 0.4 * 0.02 / (2 * 0.6) alone
    assert p99_without_queueing(config) == pytest.approx(0.08 - k * 0.4 * 0.02 / 1.2)
    copy = latency_copy(Load("c", 0.3, 15.0), config, 0.1)
    assert copy is not None
    neighbour = Load("n", 0.5, 5.0)  # 100 ms a request: the light copy waits behind it
    alone, shared = copy.estimated_p99_seconds([copy.load]), copy.estimated_p99_seconds([copy.load, neighbour])
    assert alone < 0.1 < shared
    assert shared == pytest.approx(copy.p99_zero_seconds + k * (0.3 * 0.02 + 0.5 * 0.1) / (2 * 0.2))
    assert latency_copy(Load("c", 0.3, 15.0), config, None) is None  # no budget, no limit


def plan(budget, latency_aware):
    profile = Profile({}, tuple(ModelFootprint(n, {MEM: 1e9, UTIL: 0.5}) for n in "ab"),
                      configs={n: (CONFIG,) for n in "ab"})
    base = PlacementProblem(tuple(Device(f"gpu-{k}", {MEM: 16e9}) for k in (1, 2)), profile.models)
    demands = [ModelDemand(n, 80.0, budget) for n in "ab"]
    return plan_for_demand(profile, demands, base, time_limit_seconds=3.0, latency_aware=latency_aware)


def test_two_models_whose_utilisations_fit_together_but_whose_p99_would_not_are_planned_apart():
    # 80/s is 40% each, 5 ms a request: alone a p99 of 36 ms, together 75 ms, over a 50 ms budget.
    assert plan(0.05, latency_aware=False).result.device_count == 1
    separated = plan(0.05, latency_aware=True).result
    assert separated.device_count == 2
    assert separated.placement.assignments["a"] != separated.placement.assignments["b"]


def test_a_budget_the_shared_device_still_meets_keeps_them_together():
    # 75 ms together is within a 150 ms budget.
    assert plan(0.15, latency_aware=True).result.device_count == 1


def test_the_flag_on_the_command_line_separates_them_and_needs_a_demand(tmp_path, capsys):
    (tmp_path / "profile.yaml").write_text(PROFILE)
    (tmp_path / "demand.yaml").write_text("demand:\n  - {model: a, rate_per_second: 80, latency_p99_seconds: 50ms}\n"
                                          "  - {model: b, rate_per_second: 80, latency_p99_seconds: 50ms}\n")
    command = ["plan", "--profile", str(tmp_path / "profile.yaml"), "--device-memory", "16GiB", "--format", "json"]
    assert main([*command, "--demand", str(tmp_path / "demand.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["device_count"] == 1
    assert main([*command, "--demand", str(tmp_path / "demand.yaml"), "--latency-aware"]) == 0
    assert json.loads(capsys.readouterr().out)["device_count"] == 2
    assert main([*command, "--latency-aware"]) == 2
    assert "--latency-aware holds each model's p99 to the budget of a demand" in capsys.readouterr().err
