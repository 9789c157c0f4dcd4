"""``gpupack verify`` on a real Triton server held to one core, as a device is: models that keep
their budgets alone can break them together, and verify must say so before a plan is applied."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from gpupack.testing import SampleModel, TritonInstallation, TritonServer, TritonStartError
from gpupack.triton.processes import backend_processes
from gpupack.timing import wait_until

from tests.conftest import held_to_one_core

from .conftest import MIB, gpupack, interrupted, start_gpupack

# Each burns 50 ms of CPU per request: at 12/s, 60% of one core alone and 120% together. Requests
# arrive at fixed times, so below the core's capacity a copy waits at most for its neighbour's one
# request (80% together kept p99 near 100 ms on a quiet core, and passed); above it the queue grows
# for as long as the load lasts, whatever else the machine runs.
HEAVY = [SampleModel("heavy-a", 8 * MIB, compute_seconds=0.05), SampleModel("heavy-b", 8 * MIB, compute_seconds=0.05)]
# 2 ms per request: 2.4% each, together still far from the core's capacity.
LIGHT = [SampleModel("light-a", 8 * MIB, compute_seconds=0.002), SampleModel("light-b", 8 * MIB, compute_seconds=0.002)]
RATE_PER_SECOND = 12
# Alone, a heavy copy answers in 50 ms and a few times that when the machine is busy; together, in seconds.
BUDGET_SECONDS = 0.5
DEMAND = "demand:\n" + "".join(f"  - {{model: {m.name}, rate_per_second: {RATE_PER_SECOND}, "
                               f"latency_p99_seconds: {BUDGET_SECONDS}}}\n" for m in HEAVY + LIGHT)
DURATION = "5s"
@pytest.fixture(scope="module")
def one_core_server(triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[TritonServer]:
    with held_to_one_core(triton_installation, HEAVY + LIGHT, "one-core", tmp_path_factory) as server:
        yield server


def demand_plan(tmp_path: Path, *devices: list[SampleModel]) -> Path:
    """A plan as ``gpupack plan --demand --format json`` writes it: each device's copies and rates."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"devices": [
        {"name": f"cpu-{k}", "copies": [{"model": m.name, "config": "profiled", "rate_per_second": RATE_PER_SECOND}
                                        for m in models],
         "totals": {"gpu_memory_bytes": 200 * MIB, "gpu_utilization_ratio": 0.6 * len(models)}}
        for k, models in enumerate(devices, start=1)]}))
    return path


def test_a_pair_that_meets_its_budget_alone_but_not_together_fails_verification(
    one_core_server: TritonServer, tmp_path: Path
) -> None:
    a, b = HEAVY
    (tmp_path / "demand.yaml").write_text(DEMAND)
    plan = demand_plan(tmp_path, [a], [b], [a, b])

    result = gpupack("verify", "--plan", str(plan), "--demand", str(tmp_path / "demand.yaml"),
                     "--server", one_core_server.http_url, "--duration", DURATION, "--format", "json")

    assert result.returncode == 1, result.stderr
    alone_a, alone_b, together = json.loads(result.stdout)["devices"]
    assert alone_a["passed"] and alone_b["passed"], result.stdout
    assert all(m["p99_seconds"] <= BUDGET_SECONDS for m in alone_a["models"] + alone_b["models"])
    assert not together["passed"]
    assert max(m["p99_seconds"] for m in together["models"]) > BUDGET_SECONDS
    assert one_core_server.ready_models() == []


def test_the_json_names_each_device_and_copy_with_predicted_and_measured(
    one_core_server: TritonServer, tmp_path: Path
) -> None:
    (tmp_path / "demand.yaml").write_text(DEMAND)
    plan = demand_plan(tmp_path, LIGHT)

    result = gpupack("verify", "--plan", str(plan), "--demand", str(tmp_path / "demand.yaml"),
                     "--server", one_core_server.http_url, "--duration", DURATION, "--format", "json")

    assert result.returncode == 0, result.stdout + result.stderr
    [device] = json.loads(result.stdout)["devices"]
    assert set(device) == {"name", "passed", "predicted", "measured", "models"}
    assert device["name"] == "cpu-1" and device["passed"] is True
    assert device["predicted"] == {"gpu_memory_bytes": 200 * MIB, "gpu_utilization_ratio": 1.2}
    assert device["measured"]["gpu_memory_bytes"] > 2 * 8 * MIB  # the server and both stubs
    assert 0 < device["measured"]["gpu_utilization_ratio"] <= 1
    for model, entry in zip(LIGHT, device["models"]):
        assert set(entry) == {"model", "rate_per_second", "served_per_second", "p99_seconds", "budget_seconds", "passed"}
        assert entry["model"] == model.name and entry["budget_seconds"] == BUDGET_SECONDS and entry["passed"]
        assert entry["served_per_second"] == pytest.approx(RATE_PER_SECOND, rel=0.1)


def test_a_pair_that_coexists_passes_a_plain_plan_at_its_profiled_rates(
    one_core_server: TritonServer, tmp_path: Path
) -> None:
    (tmp_path / "profile.yaml").write_text(
        "server_baseline: {peak_gpu_memory_bytes: 100MiB}\nmodels:\n"
        + "".join(f"  - {{model: {m.name}, throughput_per_second: {RATE_PER_SECOND}, peak_gpu_memory_bytes: 50MiB}}\n"
                  for m in LIGHT))
    (tmp_path / "plan.json").write_text(json.dumps({"devices": [{"name": "cpu-1", "models": [m.name for m in LIGHT]}]}))

    result = gpupack("verify", "--plan", str(tmp_path / "plan.json"), "--profile", str(tmp_path / "profile.yaml"),
                     "--server", one_core_server.http_url, "--duration", DURATION)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "cpu-1" in result.stdout and "light-a" in result.stdout and "light-b" in result.stdout
    assert result.stdout.rstrip().endswith("every device passed (1 device)")
    assert one_core_server.ready_models() == []


def test_sigterm_mid_device_leaves_nothing_loaded(one_core_server: TritonServer, tmp_path: Path) -> None:
    process = start_gpupack("verify", "--plan", str(demand_plan(tmp_path, LIGHT)), "--server",
                            one_core_server.http_url, "--duration", "30s")

    def replaying(p: subprocess.Popen[str]) -> None:
        assert p.stderr is not None
        assert p.stderr.readline().startswith("verifying cpu-1")
        wait_until(lambda: len(one_core_server.ready_models()) == 2, 60, "both copies loaded")

    stderr = interrupted(process, replaying, lambda p: p.send_signal(signal.SIGTERM))

    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert one_core_server.ready_models() == []


def test_a_configuration_the_profile_lacks_is_refused_before_anything_is_loaded(
    one_core_server: TritonServer, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"devices": [{"name": "cpu-1", "copies": [
        {"model": "light-a", "config": "i4-b8-dyn-0us", "rate_per_second": 5}]}]}))

    result = gpupack("verify", "--plan", str(plan), "--server", one_core_server.http_url, "--duration", "1s")

    assert result.returncode == 2, result.stderr
    assert "light-a is planned in configuration 'i4-b8-dyn-0us'" in result.stderr
    assert one_core_server.ready_models() == []


def test_a_plain_plan_without_a_profile_names_the_missing_rate(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(json.dumps({"devices": [{"name": "cpu-1", "models": ["light-a"]}]}))

    result = gpupack("verify", "--plan", str(tmp_path / "plan.json"), "--server", "http://127.0.0.1:9", "--duration", "1s")

    assert result.returncode == 2
    assert "devices[0].models[0]: a plain plan's models carry no rate: give --profile" in result.stderr


def test_a_server_that_cannot_be_reached_is_exit_3_in_one_line(tmp_path: Path) -> None:
    result = gpupack("verify", "--plan", str(demand_plan(tmp_path, LIGHT)), "--server", "http://127.0.0.1:9",
                     "--duration", "1s")

    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == ["gpupack verify: error: cannot reach the Triton server at "
                                                  "http://127.0.0.1:9: connection refused"]


def test_a_cpu_budget_holds_the_server_and_its_model_processes_to_its_cores(one_core_server: TritonServer) -> None:
    core = max(os.sched_getaffinity(0))
    one_core_server.load_model(LIGHT[0].name)
    try:
        stubs = [p.pid for p in backend_processes(one_core_server.pid)]
        assert stubs and all(os.sched_getaffinity(pid) == {core} for pid in [one_core_server.pid, *stubs])
    finally:
        one_core_server.unload_model(LIGHT[0].name)


def test_a_cpu_budget_of_cores_this_process_cannot_use_is_refused(triton_installation: TritonInstallation,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(TritonStartError, match=r"cores \[4096\] are not among those this process may use"):
        TritonServer(tmp_path, installation=triton_installation, cpus={4096})
