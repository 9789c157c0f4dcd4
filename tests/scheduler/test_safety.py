"""Safety rails: one scheduler at a time, limited moves per run, cooldowns that survive restarts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.scheduler.steps import Budget, Step
from gpupack.scheduler.problem import PlacementProblem
from gpupack.scheduler.safety import Cooldowns, FileLock, LockHeldError, StateError, admit

MEM = Resource.GPU_MEMORY

HOLD_LOCK = """
import sys, time
from gpupack.scheduler.safety import FileLock
with FileLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_scheduler_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "rebalance.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError, match=f"another scheduler holds {path} \\(pid {holder.pid} on "):
            FileLock(path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops a dead holder's lock: no stale lock to clean up by hand.
    with FileLock(path):
        assert "pid " in path.read_text()


def test_the_lock_is_free_again_after_the_with_block(tmp_path: Path) -> None:
    path = tmp_path / "state" / "rebalance.lock"
    with FileLock(path):
        pass
    with FileLock(path):
        pass


def test_cooldowns_survive_a_restart_and_expire(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "cooldown.json"
    Cooldowns(path, 600, clock=lambda: now[0]).record_move("large")
    now[0] += 100
    assert Cooldowns(path, 600, clock=lambda: now[0]).remaining_seconds() == {"large": 500.0}
    now[0] += 500
    assert Cooldowns(path, 600, clock=lambda: now[0]).remaining_seconds() == {}


def test_a_corrupt_cooldown_file_is_an_error_not_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "cooldown.json"
    path.write_text("[1, 2")
    with pytest.raises(StateError, match="cannot read the cooldown file"):
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
