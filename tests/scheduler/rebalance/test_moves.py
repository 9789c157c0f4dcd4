"""Move plans: every intermediate state within limits, both copies counted while a model moves."""

from __future__ import annotations

import random

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.scheduler.rebalance.moves import check_order, plan_moves
from gpupack.scheduler.rebalance.steps import Budget, Step
from gpupack.scheduler.packing.problem import PlacementProblem

MEM = Resource.GPU_MEMORY
UTIL = Resource.GPU_UTILIZATION


def budget(
    memory: dict[str, float], limits: dict[str, float], baseline: float = 0.0, util: dict | None = None
) -> Budget:
    models = [
        ModelFootprint(m, {MEM: v, **({UTIL: util[m]} if util and m in util else {})}) for m, v in memory.items()
    ]
    devices = tuple(Device(name, {MEM: 1000.0}) for name in limits)
    problem = PlacementProblem(devices, tuple(models), {MEM: baseline}, {d: {MEM: v} for d, v in limits.items()})
    return Budget.from_problem(problem)


def test_two_large_models_on_one_device_split_with_one_move() -> None:
    b = budget({"large-1": 160, "large-2": 160}, {"a": 320, "b": 320}, baseline=50)
    plan = plan_moves(
        Placement({"large-1": ("a",), "large-2": ("a",)}), Placement({"large-1": ("a",), "large-2": ("b",)}), b
    )
    assert plan.safe
    assert plan.steps == (Step("large-2", "a", "b"),)


def test_a_model_waits_until_the_device_it_needs_has_been_freed() -> None:
    # t holds C (leaving for y); A must come from y to t, B from z to t. Taking B first would fill t
    # while C still sits there, leaving A and C stuck: the planner must move A (then C) before B.
    b = budget({"A": 5, "B": 5, "C": 5}, {"t": 10, "y": 5, "z": 10})
    current = Placement({"A": ("y",), "B": ("z",), "C": ("t",)})
    target = Placement({"A": ("t",), "B": ("t",), "C": ("y",)})
    plan = plan_moves(current, target, b)
    assert plan.safe
    assert plan.steps == (Step("A", "y", "t"), Step("C", "t", "y"), Step("B", "z", "t"))
    assert check_order(current, plan.steps, b) is None
    # B first: either order of the other two then breaks a limit.
    assert check_order(current, [Step("B", "z", "t"), Step("A", "y", "t"), Step("C", "t", "y")], b) == (
        "step 2 (move A y -> t): t would exceed its gpu_memory limit")
    assert check_order(current, [Step("B", "z", "t"), Step("C", "t", "y"), Step("A", "y", "t")], b) == (
        "step 2 (move C t -> y): y would exceed its gpu_memory limit")


def test_both_copies_count_during_a_move() -> None:
    current = Placement({"X": ("a",), "Y": ("b",)})
    b = budget({"X": 60, "Y": 50}, {"a": 100, "b": 100})
    # X alone would fit on b after Y left, but Y cannot leave first: a still holds X.
    assert check_order(current, [Step("X", "a", "b"), Step("Y", "b", "a")], b) == (
        "step 1 (move X a -> b): b would exceed its gpu_memory limit")
    assert check_order(current, [Step("Y", "b", "a"), Step("X", "a", "b")], b) == (
        "step 1 (move Y b -> a): a would exceed its gpu_memory limit")


def test_a_swap_between_full_devices_is_refused_and_routed_through_a_spare_device() -> None:
    b = budget({"X": 60, "Y": 60}, {"a": 100, "b": 100, "spare": 100})
    current = Placement({"X": ("a",), "Y": ("b",)})
    target = Placement({"X": ("b",), "Y": ("a",)})
    plan = plan_moves(current, target, b)
    assert not plan.safe
    assert plan.steps == ()
    assert plan.blocked == (Step("X", "a", "b"), Step("Y", "b", "a"))
    assert plan.reason == "no order keeps every device within its limits: move X a -> b, move Y b -> a"
    assert plan.relaxation is not None
    assert plan.relaxation.description == "move X to spare first, temporarily, then on to b"
    assert plan.relaxation.steps == (
        Step("X", "a", "spare", temporary=True), Step("Y", "b", "a"), Step("X", "spare", "b"))
    assert check_order(current, plan.relaxation.steps, b) is None


def test_without_a_spare_device_the_smallest_limit_raise_is_proposed() -> None:
    b = budget({"X": 60, "Y": 50}, {"a": 100, "b": 100})
    current = Placement({"X": ("a",), "Y": ("b",)})
    plan = plan_moves(current, Placement({"X": ("b",), "Y": ("a",)}), b)
    assert not plan.safe and plan.relaxation is not None
    # Moving Y first needs a to hold 60 + 50 = 110: 10 over, the smaller of the two excesses.
    assert plan.relaxation.description == "raise the gpu_memory limit of a by 10 B for the duration of the moves"
    assert plan.relaxation.steps == (Step("Y", "b", "a"), Step("X", "a", "b"))


def test_every_resource_is_checked_not_only_memory() -> None:
    b = budget({"X": 10, "Y": 10}, {"a": 100, "b": 100}, util={"X": 0.7, "Y": 0.5})
    current = Placement({"X": ("a",), "Y": ("b",)})
    problem = check_order(current, [Step("X", "a", "b")], b)
    assert problem == "step 1 (move X a -> b): b would exceed its gpu_utilization limit"


def test_a_device_already_over_its_limit_takes_no_newcomer() -> None:
    b = budget({"L1": 160, "L2": 160, "S": 10}, {"a": 300, "b": 300})
    current = Placement({"L1": ("a",), "L2": ("a",), "S": ("b",)})
    assert check_order(current, [Step("S", "b", "a")], b) == (
        "step 1 (move S b -> a): a would exceed its gpu_memory limit")
    plan = plan_moves(current, Placement({"L1": ("a",), "L2": ("b",), "S": ("b",)}), b)
    assert plan.safe and plan.steps == (Step("L2", "a", "b"),)


def test_replicas_are_added_and_dropped() -> None:
    b = budget({"M": 10}, {"a": 100, "b": 100, "c": 100})
    current = Placement({"M": ("a", "b")})
    plan = plan_moves(current, Placement({"M": ("a", "b", "c")}), b)
    assert plan.steps == (Step("M", None, "c"),)
    plan = plan_moves(current, Placement({"M": ("a",)}), b)
    assert plan.steps == (Step("M", "b", None),)


def test_nothing_to_do_when_the_placement_already_matches() -> None:
    b = budget({"M": 10}, {"a": 100})
    plan = plan_moves(Placement({"M": ("a",)}), Placement({"M": ("a",)}), b)
    assert plan.safe and plan.steps == ()


def test_random_fleets_get_verified_safe_orders() -> None:
    rng = random.Random(7)
    solved = 0
    for _ in range(200):
        devices = [f"d{i}" for i in range(rng.randint(2, 6))]
        sizes = {f"m{i}": float(rng.randint(5, 45)) for i in range(rng.randint(2, 3 * len(devices)))}
        current, target = _fit(sizes, devices, rng), _fit(sizes, devices, rng)
        if current is None or target is None:
            continue
        b = budget(sizes, {d: 100.0 for d in [*devices, "spare"]})
        plan = plan_moves(current, target, b)
        steps = plan.steps if plan.safe else (plan.relaxation.steps if plan.relaxation else None)
        if steps is None:
            continue
        solved += 1
        assert check_order(current, steps, b) is None
        _assert_reaches(current, steps, target)
    assert solved >= 150


def _fit(sizes: dict[str, float], devices: list[str], rng: random.Random) -> Placement | None:
    room = {d: 100.0 for d in devices}
    pairs = []
    for model, size in sizes.items():
        choices = [d for d in devices if room[d] >= size]
        if not choices:
            return None
        device = rng.choice(choices)
        room[device] -= size
        pairs.append((model, device))
    return Placement.from_pairs(pairs)


def _assert_reaches(current: Placement, steps: tuple[Step, ...], target: Placement) -> None:
    pairs = set(current.pairs())
    for step in steps:
        if step.source:
            pairs.remove((step.model, step.source))
        if step.target:
            pairs.add((step.model, step.target))
    assert pairs == set(target.pairs())


def test_a_plan_of_thousands_of_steps_is_ordered() -> None:
    sizes = {f"m{i}": 1.0 for i in range(1500)}
    b = budget(sizes, {**{f"old{i}": 100.0 for i in range(15)}, **{f"new{i}": 100.0 for i in range(15)}})
    current = Placement({m: (f"old{i % 15}",) for i, m in enumerate(sizes)})
    target = Placement({m: (f"new{i % 15}",) for i, m in enumerate(sizes)})
    plan = plan_moves(current, target, b)
    assert plan.safe and len(plan.steps) == 1500
