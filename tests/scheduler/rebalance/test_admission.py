"""What a run may do: a limited number of moves, no model moved again while it cools down, and
cooldowns that survive restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.scheduler.packing.problem import PlacementProblem
from gpupack.scheduler.rebalance.admission import Cooldowns, admit
from gpupack.scheduler.rebalance.locks import StateError
from gpupack.scheduler.rebalance.steps import Budget, Step

MEM = Resource.GPU_MEMORY


def test_cooldowns_survive_a_restart_and_expire_exactly_when_the_cooldown_has_passed(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "cooldown.json"

    def after_a_restart() -> Cooldowns:
        return Cooldowns(path, 600, clock=lambda: now[0])

    after_a_restart().record_move("large")
    now[0] = 1100.0
    assert after_a_restart().remaining_seconds() == {"large": 500.0}
    now[0] = 1599.5
    assert after_a_restart().remaining_seconds() == {"large": 0.5}
    now[0] = 1600.0
    assert after_a_restart().remaining_seconds() == {}


@pytest.mark.parametrize(("text", "why"), [("[1, 2", "Expecting"), ("[1, 2]", "not a JSON object")])
def test_a_corrupt_cooldown_file_is_an_error_not_a_reset(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "cooldown.json"
    path.write_text(text)
    with pytest.raises(StateError, match=f"cannot read the cooldown file {path}: {why}"):
        Cooldowns(path, 600).remaining_seconds()


def _budget(sizes: dict[str, float], limit: float, devices: tuple[str, ...]) -> Budget:
    problem = PlacementProblem(
        tuple(Device(d, {MEM: limit}) for d in devices), tuple(ModelFootprint(m, {MEM: v}) for m, v in sizes.items())
    )
    return Budget.from_problem(problem)


def test_the_moves_per_run_limit_keeps_the_first_steps_of_the_plan() -> None:
    budget = _budget({"x": 10, "y": 10, "z": 10}, 100, ("a", "b"))
    current = Placement({"x": ("a",), "y": ("a",), "z": ("a",)})
    steps = [Step("x", "a", "b"), Step("y", "a", "b"), Step("z", "a", "b")]
    admission = admit(current, steps, budget, max_moves=2, cooling_seconds={})
    assert admission.admitted == tuple(steps[:2])
    assert admission.deferred == ((steps[2], "the limit of 2 moves per run is reached"),)


def test_a_step_that_relied_on_a_deferred_one_is_deferred_too() -> None:
    # y can only move to a once x has left it; x is cooling down, so y waits as well.
    budget = _budget({"x": 60, "y": 60}, 100, ("a", "b", "c"))
    current = Placement({"x": ("a",), "y": ("b",)})
    steps = [Step("x", "a", "c"), Step("y", "b", "a")]
    admission = admit(current, steps, budget, max_moves=None, cooling_seconds={"x": 120.0})
    assert admission.admitted == ()
    assert [why for _, why in admission.deferred] == [
        "x moved recently (cooldown 120s left)",
        "unsafe without a deferred step: step 1 (move y b -> a): a would exceed its gpu_memory limit",
    ]
