"""The promises `gpupack profile` makes a user, against real Triton on the CPU (host backend):
nothing measured is dropped, bad input starts nothing, every stop signal cleans up, a shared or
configured server has a way forward."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path
from typing import Callable

import psutil
import pytest
import yaml

from gpupack.testing import TritonServer
from gpupack.timing import wait_until

from tests.profiler.conftest import PROFILED, SEARCHED, SMALL, first_point, gpupack, interrupted, start_gpupack

pytestmark = pytest.mark.triton
QUICK = ("--duration", "0.3s", "--warmup", "0.1s", "--backend", "host")
ONE_CONFIG = ("--search", "exhaustive", "--instances", "1", "--max-batch", "1", "--dynamic-batching", "off",
              "--concurrency", "1,2")


def test_a_searched_model_that_misses_its_budget_is_written_with_each_config_and_why(
    server: TritonServer, tmp_path: Path
) -> None:
    out = tmp_path / "profile.yaml"
    model = SEARCHED[1].name

    result = gpupack("profile", "--server", server.http_url, "--models", model, *ONE_CONFIG,
                     "--latency-budget", "0.01ms", *QUICK, "--out", str(out))

    assert result.returncode == 1, result.stdout + result.stderr
    [entry] = yaml.safe_load(out.read_text())["models"]
    assert entry["model"] == model and entry["configs"] == []
    [rejected] = entry["rejected"]
    assert rejected["name"] == "i1-b1-dyn-off"
    assert re.search(r"p99 [\d.]+ ms at its lightest load is over the 0.01 ms budget", rejected["reason"])
    assert model in result.stderr and "refuses them by name" in result.stderr
    assert server.ready_models() == []

    plan = gpupack("plan", "--profile", str(out), "--device-memory", "1GiB")
    assert plan.returncode == 1 and f"model {model} has no configuration within its constraints" in plan.stderr


def test_a_swept_model_with_no_point_within_the_budget_is_written_as_rejected(
    server: TritonServer, tmp_path: Path
) -> None:
    out = tmp_path / "profile.yaml"

    result = gpupack("profile", "--server", server.http_url, "--models", f"{SMALL.name},{PROFILED[1].name}",
                     "--latency-budget", "0.01ms", *QUICK, "--out", str(out))

    assert result.returncode == 1, result.stdout + result.stderr
    entries = yaml.safe_load(out.read_text())["models"]
    assert [e["model"] for e in entries] == [SMALL.name, PROFILED[1].name]
    for entry in entries:
        assert entry["configs"] == []
        [rejected] = entry["rejected"]
        assert rejected["name"] == "own-config"
        assert "over the 0.01 ms budget at every load measured" in rejected["reason"]


@pytest.mark.parametrize("where", ["--model-repository", "--server"])
def test_a_model_the_repository_lacks_is_refused_before_anything_starts(
    where: str, triton_installation: object, profile_repository: Path, start_triton: Callable[..., TritonServer],
    tmp_path: Path
) -> None:
    out = tmp_path / "out" / "profile.yaml"
    out.parent.mkdir()
    source = (str(profile_repository) if where == "--model-repository"
              else start_triton(name="idle", repository=profile_repository).http_url)

    result = gpupack("profile", where, source, "--models", f"{SMALL.name},no-such-model", *ONE_CONFIG, *QUICK,
                     "--out", str(out))

    assert result.returncode == 2, result.stdout + result.stderr
    assert "--models: no model no-such-model in the repository" in result.stderr
    assert "started tritonserver" not in result.stderr
    assert list(out.parent.iterdir()) == []  # no profile, no checkpoint


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_unload_what_was_loaded_and_keep_what_was_measured(
    stop: signal.Signals, server: TritonServer, tmp_path: Path
) -> None:
    out = tmp_path / "partial.yaml"
    process = start_gpupack("profile", "--server", server.http_url, "--models", f"{SMALL.name},{PROFILED[0].name}",
                            "--batch", "1,2", "--concurrency", "1,2", "--duration", "1s", "--warmup", "0.2s",
                            "--backend", "host", "--out", str(out))

    stderr = interrupted(process, first_point, lambda p: p.send_signal(stop))

    assert process.returncode == 128 + stop, stderr
    assert server.ready_models() == []
    assert [m["model"] for m in yaml.safe_load(out.read_text())["models"]] == [SMALL.name]


def test_sigterm_stops_the_tritonserver_the_profiler_started(
    triton_installation: object, profile_repository: Path, tmp_path: Path
) -> None:
    process = start_gpupack("profile", "--model-repository", str(profile_repository), "--models", SMALL.name,
                            "--concurrency", "1,2,4", "--duration", "1s", "--warmup", "0.2s", "--backend", "host",
                            "--out", str(tmp_path / "partial.yaml"))
    pids = []

    def started_and_measuring(p: subprocess.Popen[str]) -> None:
        for line in first_point(p):
            pids.extend(re.findall(r"started tritonserver \(pid (\d+)", line))

    stderr = interrupted(process, started_and_measuring, lambda p: p.send_signal(signal.SIGTERM))

    assert process.returncode == 128 + signal.SIGTERM, stderr
    [pid] = pids
    wait_until(lambda: not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE,
               10, "the profiler's tritonserver gone")


def test_a_server_with_other_models_loaded_names_the_way_forward_and_changes_nothing(
    server: TritonServer, tmp_path: Path
) -> None:
    server.load_model(PROFILED[0].name)
    out = tmp_path / "out" / "profile.yaml"
    out.parent.mkdir()

    result = gpupack("profile", "--server", server.http_url, "--models", SMALL.name, *ONE_CONFIG, *QUICK,
                     "--out", str(out))

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"already has {PROFILED[0].name} loaded" in result.stderr and "--shared-server" in result.stderr
    assert list(out.parent.iterdir()) == []  # not even a checkpoint
    assert server.ready_models() == [PROFILED[0].name]


def test_shared_server_measures_beside_the_loaded_models_and_leaves_them_alone(
    server: TritonServer, tmp_path: Path
) -> None:
    server.load_model(PROFILED[0].name)
    out = tmp_path / "profile.yaml"

    result = gpupack("profile", "--server", server.http_url, "--shared-server", "--models", SMALL.name, *QUICK,
                     "--out", str(out), timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    assert server.ready_models() == [PROFILED[0].name]
    text = out.read_text()
    assert text.startswith(f"# measured on a shared server ({server.http_url}) with {PROFILED[0].name} loaded")
    [entry] = yaml.safe_load(text)["models"]
    # Its own backend process only: the 600 MiB model beside it is not charged to it.
    assert SMALL.footprint_bytes < entry["peak_gpu_memory_bytes"] < PROFILED[0].footprint_bytes


def test_without_server_flags_the_profiler_measures_on_the_server_the_config_file_lists(
    server: TritonServer, tmp_path: Path
) -> None:
    config = tmp_path / "gpupack.yaml"
    config.write_text(yaml.safe_dump({"exporter": {"servers": [{"name": "gpu-0", "url": server.http_url}]}}))
    out = tmp_path / "profile.yaml"

    by_default = gpupack("--config", str(config), "profile", "--models", SMALL.name, *QUICK, "--out", str(out))
    by_name = gpupack("--config", str(config), "profile", "--server", "gpu-0", "--models", SMALL.name, *QUICK,
                      "--out", str(out))

    for result in (by_default, by_name):
        assert result.returncode == 0, result.stdout + result.stderr
        assert [m["model"] for m in yaml.safe_load(out.read_text())["models"]] == [SMALL.name]
