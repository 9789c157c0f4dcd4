"""`gpupack profile --search` as a user runs it, against real Triton on the CPU (host backend)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable

import pytest
import yaml

from gpupack.profiles import load_profile
from gpupack.testing import TritonServer
from gpupack.timing import wait_until

from tests.profiler.conftest import SEARCHED, gpupack, interrupted, start_gpupack

pytestmark = pytest.mark.triton
SPACE = ("--instances", "1,2", "--max-batch", "1,4", "--dynamic-batching", "off,on", "--max-queue-delay", "0.5ms")
QUICK = ("--duration", "0.3s", "--warmup", "0.1s", "--backend", "host")


def test_quick_search_recommends_a_config_per_model_within_budget_and_leaves_nothing_loaded(
    server: TritonServer, start_triton: Callable[..., TritonServer], profile_repository: Path, tmp_path: Path
) -> None:
    out, report, deploy = tmp_path / "profile.yaml", tmp_path / "report", tmp_path / "deploy"
    models = [m.name for m in SEARCHED]

    result = gpupack("profile", "--server", server.http_url, "--models", ",".join(models), "--search", "quick",
                     *SPACE, "--latency-budget", "250ms", *QUICK, "--out", str(out), "--report", str(report),
                     "--out-repository", str(deploy), timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    assert server.ready_models() == []
    document = yaml.safe_load(out.read_text())
    for entry in document["models"]:
        assert entry["latency_p99_seconds"] <= 0.25
        names = [c["name"] for c in entry["configs"]]
        assert len(names) == len(set(names)) < 8  # guided: not every variant
        chosen = next(c for c in entry["configs"] if entry["throughput_per_second"] in
                      [p["throughput_per_second"] for p in c["points"]])
        assert (deploy / entry["model"] / "config.pbtxt").exists()
        assert f"max_batch_size: {chosen['max_batch_size']}" in (deploy / entry["model"] / "config.pbtxt").read_text()
    assert sorted(m.model for m in load_profile(out).models) == sorted(models)
    assert "<- recommended" in result.stdout
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "queue (ms)" in html
    assert (report / "configs.csv").exists()

    # The written config is one Triton loads, next to the model's own version directory.
    for model in models:
        shutil.copytree(profile_repository / model / "1", deploy / model / "1")
    deployed = start_triton(name="deployed", repository=deploy, models=models)
    assert deployed.ready_models() == sorted(models)

    plan = gpupack("plan", "--profile", str(out), "--device-memory", "1GiB", "--format", "json")
    assert plan.returncode == 0, plan.stderr


def _start(server: TritonServer, out: Path, *extra: str) -> subprocess.Popen[str]:
    return start_gpupack("profile", "--server", server.http_url, "--models", SEARCHED[0].name, "--search", "exhaustive",
                         *SPACE, *QUICK, "--concurrency", "1,2,4", "--out", str(out), *extra)


def _measured_points(checkpoint: Path) -> dict[str, list[dict]]:
    try:
        configs = json.loads(checkpoint.read_text())["configs"].get(SEARCHED[0].name, {})
    except (FileNotFoundError, ValueError):
        return {}
    return {name: record["points"] for name, record in configs.items()}


def _points_measured(checkpoint: Path, count: int) -> Callable[[subprocess.Popen[str]], object]:
    """What :func:`interrupted` waits for: ``count`` points in the checkpoint, the profiler still running."""

    def measured(process: subprocess.Popen[str]) -> None:
        def enough() -> bool:
            assert process.poll() is None, process.communicate()
            return sum(len(p) for p in _measured_points(checkpoint).values()) >= count

        wait_until(enough, 300, f"{count} points in {checkpoint.name}")

    return measured


def test_resume_after_kill_9_measures_only_what_was_left_and_no_variant_stays_loaded(
    server: TritonServer, tmp_path: Path
) -> None:
    out = tmp_path / "profile.yaml"
    checkpoint = tmp_path / "profile.yaml.checkpoint.json"
    interrupted(_start(server, out), _points_measured(checkpoint, 4), lambda p: p.send_signal(signal.SIGKILL))
    before = _measured_points(checkpoint)

    # The guard restored the server the moment the profiler died.
    wait_until(lambda: not server.ready_models(), 60, "every variant unloaded")

    resumed = gpupack("profile", "--server", server.http_url, "--models", SEARCHED[0].name, "--search",
                      "exhaustive", *SPACE, *QUICK, "--concurrency", "1,2,4", "--out", str(out), "--resume",
                      timeout=600)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = _measured_points(checkpoint)
    assert len(after) == 8
    for name, points in before.items():  # the same measurements, to the last digit: none re-measured
        assert after[name][:len(points)] == points
    assert server.ready_models() == []
    entry = yaml.safe_load(out.read_text())["models"][0]
    assert len(entry["configs"]) == 8


def test_ctrl_c_in_mid_search_unloads_the_variant_and_says_how_to_resume(
    server: TritonServer, tmp_path: Path
) -> None:
    out = tmp_path / "profile.yaml"
    process = _start(server, out)
    stderr = interrupted(process, _points_measured(tmp_path / "profile.yaml.checkpoint.json", 2),
                         lambda p: p.send_signal(signal.SIGINT))

    assert process.returncode == 130, stderr
    assert server.ready_models() == []
    assert "continue with --resume" in stderr
