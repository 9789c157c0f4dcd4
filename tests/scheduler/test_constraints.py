import math

import pytest

from gpupack.domain import Device, ModelFootprint, Resource
from gpupack.rules.policy import (
    AntiAffinityPolicy,
    CapacityPolicy,
    FleetPolicy,
    PinPolicy,
    PolicySet,
    ReplicasPolicy,
    Selector,
)
from gpupack.scheduler.constraints import build_problem
from gpupack.scheduler.packing.solver import InfeasibleError, solve

GB = 10**9
MEM, UTIL = Resource.GPU_MEMORY, Resource.GPU_UTILIZATION
DEVICES = (
    Device("t4-1", {MEM: 16 * GB}, {"class": "T4"}),
    Device("t4-2", {MEM: 16 * GB}, {"class": "T4"}),
    Device("a100-1", {MEM: 80 * GB}, {"class": "A100"}),
)
MODELS = (
    ModelFootprint("llm", {MEM: 40 * GB, UTIL: 0.6}),
    ModelFootprint("resnet", {MEM: 2 * GB, UTIL: 0.3}),
    ModelFootprint("bert", {MEM: 3 * GB, UTIL: 0.5}),
)


def test_capacity_policy_sets_absolute_limits_and_utilisation_is_held_to_the_device_without_one():
    problem = build_problem(MODELS, DEVICES, {MEM: GB}, PolicySet((CapacityPolicy(name="mem-80", max_ratio=0.8),)))
    assert problem.limit(DEVICES[0], MEM) == pytest.approx(12.8 * GB)
    assert problem.limit(DEVICES[0], UTIL) == 1.0
    assert problem.constraint_sources["limit:t4-1:gpu_memory"] == "mem-80"


def test_no_plan_runs_a_device_above_100_percent_of_a_measured_resource():
    busy = tuple(ModelFootprint(f"busy-{k}", {MEM: GB, UTIL: 0.6}) for k in range(3))
    result = solve(build_problem(busy, DEVICES[:2] + (Device("t4-3", {MEM: 16 * GB}),), {}))
    assert result.device_count == 3
    assert all(totals[UTIL] <= 1.0 for totals in result.device_totals.values())


def test_only_the_resources_asked_for_are_held_to_the_device_and_memory_always_is():
    busy = tuple(ModelFootprint(f"busy-{k}", {MEM: GB, UTIL: 0.6}) for k in range(3))
    problem = build_problem(busy, DEVICES[:2], {}, limited=())
    assert math.isinf(problem.limit(DEVICES[0], UTIL)) and problem.limit(DEVICES[0], MEM) == 16 * GB
    assert solve(problem).device_count == 1


def test_a_policy_above_capacity_does_not_raise_the_limit():
    policies = PolicySet((CapacityPolicy(name="util-150", resource=UTIL, max_ratio=1.5),))
    assert build_problem(MODELS, DEVICES, {}, policies).limit(DEVICES[0], UTIL) == 1.0
    assert build_problem(MODELS, DEVICES, {}, policies, limited=(MEM,)).limit(DEVICES[0], UTIL) == 1.5


def test_utilisation_policy_splits_models_that_fit_in_memory():
    policies = PolicySet((CapacityPolicy(name="util-70", resource=UTIL, max_ratio=0.7),))
    result = solve(build_problem(MODELS[1:], DEVICES[:2], {}, policies))
    assert result.device_count == 2
    assert solve(build_problem(MODELS[1:], DEVICES[:2], {})).device_count == 1


def test_pin_keeps_a_model_on_matching_devices():
    pin = PinPolicy(name="bert-on-a100", selector=Selector(models=("bert",)), to=Selector(device_labels={"class": "A100"}))
    # Memory only: bert beside llm on the A100 is 110% busy, and this is about the pin.
    result = solve(build_problem(MODELS, DEVICES, {}, PolicySet((pin,)), limited=(MEM,)))
    assert result.placement.assignments["bert"] == ("a100-1",)


def test_anti_affinity_replicas_and_fleet_size_come_from_policies():
    policies = PolicySet((
        AntiAffinityPolicy(name="apart", models=("resnet", "bert")),
        ReplicasPolicy(name="ha", selector=Selector(models=("resnet",)), count=2),
        FleetPolicy(name="fleet", max_devices=3),
    ))
    problem = build_problem(MODELS, DEVICES, {}, policies)
    assert problem.anti_affinity == (frozenset({"resnet", "bert"}),)
    assert problem.replicas == {"resnet": 2} and problem.max_devices == 3
    result = solve(problem)
    assert set(result.placement.assignments["bert"]).isdisjoint(result.placement.assignments["resnet"])


def test_model_too_big_under_a_policy_names_model_and_policy():
    policies = PolicySet((CapacityPolicy(name="mem-40", max_ratio=0.4),))
    with pytest.raises(InfeasibleError, match=r"model llm needs .* \(mem-40\)"):
        solve(build_problem(MODELS, DEVICES, {MEM: GB}, policies))


def test_contradictory_pins_name_both_policies():
    policies = PolicySet((
        PinPolicy(name="on-t4", selector=Selector(models=("bert",)), to=Selector(device_labels={"class": "T4"})),
        PinPolicy(name="on-a100", selector=Selector(models=("bert",)), to=Selector(device_labels={"class": "A100"})),
    ))
    with pytest.raises(InfeasibleError, match="model bert: no device it may run on is left by policies on-t4, on-a100"):
        solve(build_problem(MODELS, DEVICES, {}, policies))


def test_fleet_limit_below_the_bound_names_the_policy():
    policies = PolicySet((
        FleetPolicy(name="two-gpus", max_devices=2),
        AntiAffinityPolicy(name="apart", models=("*",)),
    ))
    with pytest.raises(InfeasibleError, match="at least 3 devices, but only 2 are allowed by policy two-gpus"):
        solve(build_problem(MODELS, DEVICES, {}, policies))


GIB = 2**30
BW = Resource.MEMORY_BANDWIDTH_UTILIZATION


def _seg_cls_case():
    """The issue's case: a bandwidth limit that counts only the seg_* models."""
    models = tuple(ModelFootprint(f"seg_{k}", {MEM: 3 * GIB, BW: 0.45}) for k in range(6)) + tuple(
        ModelFootprint(f"cls_{k}", {MEM: 2 * GIB, BW: 0.60}) for k in range(6))
    devices = tuple(Device(f"gpu-{k}", {MEM: 16 * GIB}) for k in range(12))
    policy = CapacityPolicy(name="seg-bandwidth", resource=BW, max_ratio=1.0, selector=Selector(models=("seg_*",)))
    return models, devices, PolicySet((policy,))


def test_capacity_policy_scoped_to_models_counts_only_those_models_and_plans_three_devices_proven():
    from gpupack.rules.evaluator import Status, evaluate
    from gpupack.rules.peaks import DevicePeaks, ModelPeaks, PeaksSnapshot

    models, devices, policies = _seg_cls_case()
    # Bandwidth limited by the policy alone (memory only otherwise): 2 seg_ and 2 cls_ on a device.
    result = solve(build_problem(models, devices, {}, policies, limited=(MEM,)))
    assert (result.device_count, result.lower_bound, result.optimal) == (3, 3, True)
    snapshot = PeaksSnapshot(tuple(DevicePeaks(d) for d in devices),
                             tuple(ModelPeaks(m.model, "", m.peaks) for m in models))
    judged = evaluate(snapshot, policies, result.placement)
    assert judged.results and not judged.violations
    assert all(r.status is Status.OK for r in judged.results)


def test_server_scoped_capacity_and_pins_to_servers_use_the_servers_on_each_device():
    devices = (Device("gpu-a", {MEM: 16 * GB}), Device("gpu-b", {MEM: 16 * GB}), Device("gpu-c", {MEM: 16 * GB}))
    servers = {"gpu-a": ("triton-a",), "gpu-b": ("triton-b",), "gpu-c": ("triton-b", "triton-c")}
    models = (ModelFootprint("x", {MEM: 3 * GB}), ModelFootprint("y", {MEM: 3 * GB}), ModelFootprint("z", {MEM: 3 * GB}))
    policies = PolicySet((
        CapacityPolicy(name="a-small", max_bytes=4 * GB, selector=Selector(servers=("triton-a",))),
        PinPolicy(name="z-on-c", selector=Selector(models=("z",)), to=Selector(servers=("triton-c",))),
    ))
    problem = build_problem(models, devices, {}, policies, servers=servers)
    assert problem.limit(devices[0], MEM) == 4 * GB and problem.allowed_devices["z"] == {"gpu-c"}
    result = solve(problem)
    assert result.placement.assignments["z"] == ("gpu-c",)
    assert len(result.placement.models_on("gpu-a")) <= 1
