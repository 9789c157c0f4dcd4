"""`gpupack rebalance` as a user runs it: a bad placement is reported, then fixed with --apply."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from gpupack.errors import InputError
from gpupack.scheduler.rebalance.audit import read_audit
from gpupack.servers import ServerConfig, model_control_servers
from gpupack.testing import TritonServer

from tests.conftest import CROWDING_PROFILE, REBALANCE_AT_80_PERCENT

# 448 MiB devices, 80%: a 358 MiB limit. Both large models together need 64 + 2 x 160 = 384 MiB.
DEVICE_MEMORY = "448MiB"


def gpupack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpupack", "rebalance", *args], capture_output=True, text=True, timeout=240
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "profile.yaml").write_text(CROWDING_PROFILE)
    (tmp_path / "policies.yaml").write_text(REBALANCE_AT_80_PERCENT)
    return {"profile": tmp_path / "profile.yaml", "policies": tmp_path / "policies.yaml", "state": tmp_path / "state"}


@pytest.mark.triton
def test_two_large_models_on_one_device_are_reported_then_split_by_apply(
    start_crowded_fleet: Callable[[str, str], tuple[TritonServer, TritonServer]], files: dict[str, Path]
) -> None:
    a, b = start_crowded_fleet("a", "b")
    common = [
        "--server", f"a={a.http_url}", "--server", f"b={b.http_url}",
        "--profile", str(files["profile"]), "--device-memory", DEVICE_MEMORY,
        "--policies", str(files["policies"]), "--state-dir", str(files["state"]), "--drain", "0.5s",
    ]

    dry = gpupack(*common)
    assert dry.returncode == 0, dry.stderr
    assert "gpu-memory-80 on cpu:a: 384.0 MiB > limit 358.4 MiB (large-a, large-b)" in dry.stdout
    assert "move large-a cpu:a -> cpu:b" in dry.stdout or "move large-b cpu:a -> cpu:b" in dry.stdout
    assert "nothing changed" in dry.stdout
    assert a.ready_models() == ["large-a", "large-b"] and b.ready_models() == []

    applied = gpupack(*common, "--apply", "--format", "json")
    assert applied.returncode == 0, applied.stderr
    document = json.loads(applied.stdout)
    (step,) = document["applied"]
    assert step["succeeded"] and (step["source"], step["target"]) == ("cpu:a", "cpu:b")
    assert "[1/1] move" in applied.stderr and "ready on cpu:b" in applied.stderr
    assert sorted(a.ready_models() + b.ready_models()) == ["large-a", "large-b"]
    assert b.ready_models() == [step["model"]]
    assert document["device_count_proof"]["status"] == "not-attempted"  # fewest moves come first
    events = read_audit(files["state"] / "audit.jsonl")
    ready = next(e for e in events if e["event"] == "target_ready")
    assert ready["source_serving"] is True
    started = next(e for e in events if e["event"] == "run_started")
    assert started["device_count_proof"]["status"] == "not-attempted"
    assert "min-moves comes first" in started["device_count_proof"]["note"]

    after = gpupack(*common)
    assert after.returncode == 0 and "violations: none" in after.stdout


@pytest.mark.triton
def test_a_moved_model_waits_out_its_cooldown(
    start_crowded_fleet: Callable[[str, str], tuple[TritonServer, TritonServer]], files: dict[str, Path]
) -> None:
    a, b = start_crowded_fleet("a", "b")
    files["state"].mkdir()
    (files["state"] / "cooldown.json").write_text(json.dumps({"large-a": 4e9, "large-b": 4e9}))
    result = gpupack(
        "--server", f"a={a.http_url}", "--server", f"b={b.http_url}", "--profile", str(files["profile"]),
        "--device-memory", DEVICE_MEMORY, "--policies", str(files["policies"]), "--state-dir", str(files["state"]),
        "--apply",
    )
    assert result.returncode == 0, result.stderr
    deferred = result.stdout.split("deferred to a later run:\n")[1].splitlines()
    assert len(deferred) == 1
    assert re.fullmatch(r"  move (large-[ab]) cpu:a -> cpu:b: \1 moved recently \(cooldown \d+s left\)", deferred[0])
    assert a.ready_models() == ["large-a", "large-b"] and b.ready_models() == []


@pytest.mark.triton
def test_a_canary_that_does_not_answer_stops_the_plan_before_any_move(
    start_crowded_fleet: Callable[[str, str], tuple[TritonServer, TritonServer]], files: dict[str, Path]
) -> None:
    from gpupack.triton.launcher import free_port

    a, b = start_crowded_fleet("a", "b")
    canary = f"http://127.0.0.1:{free_port()}"
    result = gpupack(
        "--server", f"a={a.http_url}", "--server", f"b={b.http_url}", "--profile", str(files["profile"]),
        "--device-memory", DEVICE_MEMORY, "--policies", str(files["policies"]), "--state-dir", str(files["state"]),
        "--apply", "--verify-on", canary, "--verify-duration", "2s",
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1] == \
        f"gpupack rebalance: error: cannot reach the Triton server at {canary}: connection refused"
    assert a.ready_models() == ["large-a", "large-b"] and b.ready_models() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server", "a"], "--server: 'a' is not NAME=URL"),
        (["--server", "a=10.0.0.5:8000"], "--server: a: '10.0.0.5:8000' is not an http:// or https:// URL"),
        (["--server", "a=http://127.0.0.1:1", "--server", "a=http://127.0.0.1:2"], "server name 'a' is given twice"),
        (["--server", "a=http://127.0.0.1:1", "--profile", "p.yaml"], "--profile needs --device-memory"),
        (["--server", "a=http://127.0.0.1:1"], "give --exporter URL"),
        (["--server", "a=http://127.0.0.1:1", "--exporter", "http://x:1", "--max-moves", "0"], "--max-moves"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = gpupack(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_fleet_where_no_server_answers_changes_nothing_and_exits_3_naming_one(files: dict[str, Path]) -> None:
    from gpupack.triton.launcher import free_port

    port = free_port()
    result = gpupack(
        "--server", f"gone=http://127.0.0.1:{port}", "--profile", str(files["profile"]),
        "--device-memory", DEVICE_MEMORY, "--state-dir", str(files["state"]), "--apply",
    )
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1] == \
        f"gpupack rebalance: error: cannot reach Triton server gone at http://127.0.0.1:{port}: connection refused"


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (ServerConfig("g", "10.0.0.5:8001", protocol="grpc"), "server g: the scheduler needs its HTTP endpoint"),
        (ServerConfig("h", "http://10.0.0.5:8000", headers={"Authorization": "Bearer x"}),
         "server h: the scheduler does not send tls or headers settings"),
    ],
)
def test_servers_the_scheduler_could_not_reach_as_configured_are_refused_not_reached_without(
    server: ServerConfig, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        model_control_servers((server,))
    assert model_control_servers((ServerConfig("a", "https://10.0.0.5:8443"),)) == (
        ServerConfig("a", "https://10.0.0.5:8443"),)


def test_servers_exporter_and_policies_come_from_the_config_files_rules_section(files: dict[str, Path],
                                                                                 tmp_path: Path) -> None:
    from gpupack.triton.launcher import free_port

    exporter_port, server_port = free_port(), free_port()
    config = tmp_path / "gpupack.yaml"
    config.write_text(f"rules:\n  policies: {files['policies']}\n  exporter_url: http://127.0.0.1:{exporter_port}\n"
                      f"  servers:\n    - {{name: a, url: 'http://127.0.0.1:{server_port}'}}\n"
                      f"rebalance:\n  state_dir: {files['state']}\n")
    result = subprocess.run([sys.executable, "-m", "gpupack", "--config", str(config), "rebalance"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"gpupack rebalance: error: cannot reach the exporter at http://127.0.0.1:{exporter_port}: connection refused"]


def test_without_servers_anywhere_it_says_where_to_give_them(files: dict[str, Path]) -> None:
    result = gpupack("--profile", str(files["profile"]), "--device-memory", DEVICE_MEMORY)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gpupack rebalance: error: give the servers to manage: --server NAME=URL (repeat), or a servers list in "
        "the config file's rules section"]
