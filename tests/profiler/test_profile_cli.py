"""`gpupack profile` as a user runs it, against real Triton servers on the CPU (host backend)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from gpupack.profiles import load_profile
from gpupack.domain import Resource
from gpupack.testing import TritonServer
from gpupack.testing.highwater import BackendWatch

from tests.profiler.conftest import BROKEN, IDLE, PROFILED, SMALL, first_point, gpupack, interrupted, start_gpupack

pytestmark = pytest.mark.triton


def test_three_models_profile_matches_their_footprints_and_tritons_counts_and_feeds_plan(
    server: TritonServer, tmp_path: Path
) -> None:
    out, report = tmp_path / "profile.yaml", tmp_path / "report"
    models = [m.name for m in PROFILED]

    with BackendWatch(server.pid) as high_water:
        result = gpupack("profile", "--server", server.http_url, "--backend", "host", "--models", ",".join(models),
                         "--batch", "1,2,4", "--concurrency", "1,2,4", "--duration", "0.3s", "--warmup", "0.1s",
                         "--out", str(out), "--report", str(report))

    assert result.returncode == 0, result.stderr
    profile = load_profile(out)
    assert [m.model for m in profile.models] == models
    assert profile.server_baseline[Resource.GPU_MEMORY] > 0
    for sample in PROFILED:
        chosen = next(m for m in profile.models if m.model == sample.name)
        vmhwm = high_water.highest[sample.name]
        assert vmhwm > sample.footprint_bytes  # the watch saw the model's stub
        assert chosen.peak(Resource.GPU_MEMORY) == pytest.approx(vmhwm, rel=0.05)
        assert len(profile.points[sample.name]) == 9
        for point in profile.points[sample.name]:
            assert point.peak(Resource.GPU_MEMORY) == pytest.approx(vmhwm, rel=0.05)
        # The objective: the chosen point is the fastest one measured.
        assert chosen.throughput_per_second == max(p.throughput_per_second for p in profile.points[sample.name])

    with (report / "points.csv").open() as f:
        points = list(csv.DictReader(f))
    assert len(points) == 27
    for point in points:
        assert point["status"] == "ok"
        assert abs(float(point["throughput_difference_ratio"])) <= 0.02
    assert {"throughput_vs_latency.png", "peak_memory.png", "heatmap.png"} <= {p.name for p in report.iterdir()}
    assert "model-650 *" in result.stdout and "Server alone: max memory" in result.stdout
    assert server.ready_models() == []

    # Each model needs more than half of 1 GiB with the server: one device each.
    plan = gpupack("plan", "--profile", str(out), "--device-memory", "1GiB", "--format", "json")
    assert plan.returncode == 0, plan.stderr
    answer = json.loads(plan.stdout)
    assert answer["device_count"] == 3
    assert sorted(m for d in answer["devices"] for m in d["models"]) == sorted(models)


def test_on_a_fresh_server_a_model_is_charged_its_own_high_water_mark_not_the_servers_growth(
    server: TritonServer, tmp_path: Path
) -> None:
    # The server process grows by ~3 MiB on its first load and requests and keeps it: charged to
    # the model, that was 6% of a bare stub's ~45 MiB. Per-process attribution is exact: 2% holds.
    out = tmp_path / "profile.yaml"

    with BackendWatch(server.pid) as high_water:
        result = gpupack("profile", "--server", server.http_url, "--backend", "host", "--models", IDLE.name,
                         "--duration", "0.3s", "--warmup", "0.1s", "--out", str(out))

    assert result.returncode == 0, result.stderr
    peak = load_profile(out).models[0].peak(Resource.GPU_MEMORY)
    assert peak == pytest.approx(high_water.highest[IDLE.name], rel=0.02)


def test_model_that_fails_to_load_is_reported_and_skipped(
    triton_installation: object, profile_repository: Path, tmp_path: Path
) -> None:
    out = tmp_path / "profile.yaml"  # triton_installation: skipped, not failed, where there is no tritonserver

    # No --server: the profiler starts its own over the repository.
    result = gpupack("profile", "--model-repository", str(profile_repository), "--backend", "host",
                     "--models", f"{BROKEN.name},{SMALL.name}", "--duration", "0.3s", "--warmup", "0.1s",
                     "--out", str(out))

    assert result.returncode == 1
    assert f"{BROKEN.name}: skipped: model {BROKEN.name} failed to load" in result.stdout
    assert "fail_to_load" in result.stdout
    small, broken = yaml.safe_load(out.read_text())["models"]  # the measured first, then the refused
    assert broken["model"] == BROKEN.name and broken["configs"] == []  # kept, so that plan refuses it by name
    assert broken["rejected"][0]["reason"].startswith(f"model {BROKEN.name} failed to load")
    assert small["model"] == SMALL.name and small["peak_gpu_memory_bytes"] > 0


def _start_profile(server: TritonServer, out: Path, *extra: str) -> subprocess.Popen[str]:
    # A steady point stops after three windows of a tenth of --duration: 3s leaves a busy test
    # machine over 2 s to send its signal before SMALL's four points are all measured.
    return start_gpupack("profile", "--server", server.http_url, "--backend", "host",
                         "--models", f"{SMALL.name},{PROFILED[0].name}", "--batch", "1,2", "--concurrency", "1,2",
                         "--duration", "3s", "--warmup", "0.2s", "--out", str(out), *extra)


def test_ctrl_c_writes_the_points_measured_and_leaves_no_model_loaded(
    server: TritonServer, tmp_path: Path
) -> None:
    out = tmp_path / "partial.yaml"
    process = _start_profile(server, out)
    stderr = interrupted(process, first_point, lambda p: p.send_signal(signal.SIGINT))

    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    profile = load_profile(out)
    assert [m.model for m in profile.models] == [SMALL.name]
    assert 1 <= len(profile.points[SMALL.name]) < 4
    assert server.ready_models() == []


def test_server_that_dies_stops_the_run_with_a_clear_message(
    server: TritonServer, tmp_path: Path
) -> None:
    out = tmp_path / "partial.yaml"
    process = _start_profile(server, out)
    stderr = interrupted(process, first_point, lambda _: os.killpg(server.pid, signal.SIGKILL))

    assert process.returncode == 1, stderr
    assert f"server {server.http_address}" in stderr
    assert "Traceback" not in stderr
    assert [m.model for m in load_profile(out).models] == [SMALL.name]


def test_bad_flag_value_is_a_usage_error_naming_the_flag(tmp_path: Path) -> None:
    result = gpupack("profile", "--server", "127.0.0.1:1", "--models", "a", "--batch", "1,x")

    assert result.returncode == 2
    assert "--batch: 'x' in '1,x' is not a positive whole number" in result.stderr


def test_a_bad_max_memory_is_named_by_the_flag_the_user_typed() -> None:
    result = gpupack("profile", "--server", "127.0.0.1:1", "--models", "a", "--max-memory", "80")

    assert result.returncode == 2
    assert "--max-memory: '80' has no unit" in result.stderr and "--memory-limit" not in result.stderr


def test_help_is_written_for_users_with_the_metavars_every_subcommand_uses() -> None:
    result = gpupack("profile", "--help")

    assert result.returncode == 0
    for developer_note in ("`", ":func:", ":class:", "gpupack.profiler", "search_cli"):
        assert developer_note not in result.stdout
    metavars = set(re.findall(r"--[a-z-]+ ([A-Z][A-Za-z=,.]*)", result.stdout))
    assert metavars <= {"FILE", "URL", "DIR", "SIZE", "DURATION", "N", "NAME,...", "N,...", "RATE,...",
                        "KIND,...", "DURATION,..."}, metavars
    assert "report.html" in result.stdout  # what --report writes with --search


def test_an_unreachable_server_is_exit_3_naming_it() -> None:
    result = gpupack("profile", "--server", "127.0.0.1:1", "--models", "a")

    assert result.returncode == 3
    assert result.stderr.strip() == "gpupack profile: error: cannot reach the Triton server at http://127.0.0.1:1: " \
                                    "connection refused"
