"""Policies scoped to servers, pins to servers and alert-only policies, judged, planned and moved
on real Triton servers (one ``cpu:<server>`` device each, from a profile)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from gpupack.testing import TritonServer

from tests.conftest import CROWDING_PROFILE, REBALANCE_AT_80_PERCENT

DEVICE_MEMORY = "448MiB"  # 80%: 358 MiB; both large models with the server need 384 MiB


def rebalance(a: TritonServer, b: TritonServer, tmp_path: Path, policies: str, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "profile.yaml").write_text(CROWDING_PROFILE)
    (tmp_path / "policies.yaml").write_text(policies)
    return subprocess.run(
        [sys.executable, "-m", "gpupack", "rebalance", "--server", f"a={a.http_url}", "--server", f"b={b.http_url}",
         "--profile", str(tmp_path / "profile.yaml"), "--device-memory", DEVICE_MEMORY,
         "--policies", str(tmp_path / "policies.yaml"), "--state-dir", str(tmp_path / "state"), "--drain", "0.5s",
         *extra],
        capture_output=True, text=True, timeout=240)


@pytest.mark.triton
def test_capacity_scoped_to_a_server_and_a_pin_to_a_server_are_judged_planned_and_moved(
    start_crowded_fleet: Callable[[str, str], tuple[TritonServer, TritonServer]], tmp_path: Path
) -> None:
    a, b = start_crowded_fleet("a", "b")
    policies = ("policies:\n"
                "  - {name: a-memory-80, resource: gpu_memory, max: 80%, selector: {servers: [a]}, action: rebalance}\n"
                "  - {name: large-b-on-b, selector: {models: [large-b]}, pin: {servers: [b]}, action: rebalance}\n")
    dry = rebalance(a, b, tmp_path, policies)
    assert dry.returncode == 0, dry.stderr
    assert "a-memory-80 on cpu:a: 384.0 MiB > limit 358.4 MiB (large-a, large-b)" in dry.stdout
    assert "large-b-on-b on cpu:a" in dry.stdout
    assert "move large-b cpu:a -> cpu:b" in dry.stdout

    applied = rebalance(a, b, tmp_path, policies, "--apply")
    assert applied.returncode == 0, applied.stderr
    assert a.ready_models() == ["large-a"] and b.ready_models() == ["large-b"]
    assert "violations: none" in rebalance(a, b, tmp_path, policies).stdout


@pytest.mark.triton
def test_an_alert_policy_that_cannot_hold_does_not_block_the_rebalance_and_the_plan_names_it(
    start_crowded_fleet: Callable[[str, str], tuple[TritonServer, TritonServer]], tmp_path: Path
) -> None:
    a, b = start_crowded_fleet("a", "b")
    # Splitting the two large models needs two devices: the alert-only fleet maximum must give way.
    policies = REBALANCE_AT_80_PERCENT + "  - {name: one-device, max_devices: 1, action: alert}\n"
    applied = rebalance(a, b, tmp_path, policies, "--apply", "--format", "json")
    assert applied.returncode == 0, applied.stderr
    document = json.loads(applied.stdout)
    assert document["alert_policies_broken"] == ["one-device"]
    (step,) = document["applied"]
    assert step["succeeded"] and (step["source"], step["target"]) == ("cpu:a", "cpu:b")
    assert len(a.ready_models()) == len(b.ready_models()) == 1
