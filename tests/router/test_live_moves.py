"""Clients of a model served through a real HAProxy while the real executor moves the model
between real Triton servers: no request fails, none is retried, and each copy answers exactly
when the routed order says it should. Two control runs, without the router and with the source
unloaded before it is drained, must fail the same checks, or the checks prove nothing.

bench/live_moves.py holds the scenario and prints its latency figures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench.live_moves import MODEL, live_fleet, move_steps, problems, run_moves
from gpupack.scheduler.rebalance.steps import Step
from gpupack.testing import TritonInstallation


def test_clients_through_the_router_lose_no_request_across_ten_moves_a_scale_out_and_a_scale_in(
        triton_installation: TritonInstallation, tmp_path: Path) -> None:
    with live_fleet(tmp_path, triton_installation) as fleet:
        run = run_moves(fleet, move_steps(10), tmp_path)
    assert [m.step.kind for m in run.marks] == ["move"] * 10 + ["load", "unload"]
    assert set(Counter(a.server for a in run.answers)) == {"a", "b", "c"}, "every copy served, named by the router"
    assert problems(run) == []
    assert run.retries == {"wretr": 0, "wredis": 0}


def test_control_clients_calling_the_source_without_the_router_fail_when_it_unloads(
        triton_installation: TritonInstallation, tmp_path: Path) -> None:
    with live_fleet(tmp_path, triton_installation) as fleet:
        run = run_moves(fleet, [Step(MODEL.name, "a", "b")], tmp_path, routed=False)
    assert {a.status for a in run.failures()} == {404}, "Triton answers 404 for a model it no longer has"
    assert any("requests failed" in p for p in problems(run))


def test_control_a_source_unloaded_before_it_is_drained_fails_requests_the_router_sent_it(
        triton_installation: TritonInstallation, tmp_path: Path) -> None:
    with live_fleet(tmp_path, triton_installation) as fleet:
        run = run_moves(fleet, [Step(MODEL.name, "a", "b")], tmp_path, skip_the_drain=True)
    assert {a.server for a in run.failures()} == {"a"}, "the router sent the unloaded source requests"
    assert any("requests failed" in p for p in problems(run))
