"""`gpupack profile --request-rate` as a user runs it: the open-loop sweep on real Triton (host
backend), its points in the profile as rates, and the planners reading them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gpupack.testing import TritonServer

from tests.profiler.conftest import gpupack

pytestmark = pytest.mark.triton
QUICK = ("--duration", "0.5s", "--warmup", "0.1s", "--backend", "host")


def test_search_at_request_rates_tracks_the_offered_rate_and_the_planners_read_the_points(
    server: TritonServer, tmp_path: Path
) -> None:
    out, report = tmp_path / "profile.yaml", tmp_path / "report"

    result = gpupack("profile", "--server", server.http_url, "--models", "light", "--search", "exhaustive",
                     "--instances", "1", "--max-batch", "1", "--dynamic-batching", "off",
                     "--request-rate", "20,40,100000/s", "--latency-budget", "500ms", *QUICK,
                     "--out", str(out), "--report", str(report))

    assert result.returncode == 0, result.stdout + result.stderr
    assert server.ready_models() == []
    (entry,) = yaml.safe_load(out.read_text())["models"]
    (config,) = entry["configs"]
    points = {p["request_rate_per_second"]: p for p in config["points"]}
    assert all("concurrency" not in p for p in config["points"])
    for rate in (20.0, 40.0):  # below saturation the server keeps up with what is offered (loose: shared machine)
        assert 0.6 * rate < points[rate]["throughput_per_second"] <= 1.1 * rate
    assert "requests/s" in result.stdout and "request_rate_per_second" in (report / "configs.csv").read_text()

    plan = gpupack("plan", "--profile", str(out), "--device-memory", "1GiB", "--format", "json")
    assert plan.returncode == 0, plan.stderr
    demand = tmp_path / "demand.yaml"
    demand.write_text("demand:\n  - {model: light, rate_per_second: 15, latency_p99_seconds: 500ms}\n")
    planned = gpupack("plan", "--profile", str(out), "--device-memory", "1GiB", "--format", "json",
                      "--demand", str(demand))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    (model,) = json.loads(planned.stdout)["models"]
    assert model["model"] == "light" and model["copies"] == 1  # one copy served 20/s within the budget


def test_plain_sweep_at_request_rates_writes_rate_points(
    server: TritonServer, tmp_path: Path
) -> None:
    out = tmp_path / "profile.yaml"

    result = gpupack("profile", "--server", server.http_url, "--models", "small", "--request-rate", "25,50",
                     *QUICK, "--out", str(out))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "25/s" in result.stdout and "50/s" in result.stdout
    assert server.ready_models() == []


def test_concurrency_and_request_rate_together_are_refused(tmp_path: Path) -> None:
    result = gpupack("profile", "--server", "127.0.0.1:1", "--models", "m", "--concurrency", "2",
                     "--request-rate", "10")

    assert result.returncode == 2 and "--concurrency or --request-rate" in result.stderr
