"""``gpupack profile --colocate`` on a real Triton server held to one core: models measured together
beside themselves alone, recorded in the profile where the planner reads them back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpupack.domain import Resource
from gpupack.errors import InputError
from gpupack.profiles import load_profile
from gpupack.testing import TritonServer

from .conftest import gpupack
from .test_verify import HEAVY, LIGHT, RATE_PER_SECOND, one_core_server  # noqa: F401 - the fixture, shared

MEASURE = ("--duration", "3s", "--warmup", "0.5s", "--backend", "host")


def test_a_group_is_measured_together_beside_alone_and_read_back_from_the_profile(
    one_core_server: TritonServer, tmp_path: Path  # noqa: F811
) -> None:
    out = tmp_path / "profile.yaml"

    result = gpupack("profile", "--colocate", ",".join(m.name for m in HEAVY), "--request-rate", str(RATE_PER_SECOND),
                     "--server", one_core_server.http_url, *MEASURE, "--out", str(out))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "heavy-a+heavy-b together:" in result.stdout and "sum of the parts" in result.stdout
    profile = load_profile(out)
    [colocation] = profile.colocations
    assert colocation.group == {m.name for m in HEAVY}
    for model in colocation.models:
        assert model.together.request_rate_per_second == RATE_PER_SECOND
        assert model.alone is not None and model.alone.latency_p99_seconds is not None
        assert model.together.latency_p99_seconds > model.alone.latency_p99_seconds  # the neighbour's queue
        assert model.together.latency_breakdown_seconds["queue"] > model.alone.latency_breakdown_seconds["queue"]
    assert colocation.peaks[Resource.GPU_MEMORY] > profile.server_baseline[Resource.GPU_MEMORY]
    assert Resource.GPU_UTILIZATION in colocation.sum_of_parts
    assert {m.model for m in profile.models} == {m.name for m in HEAVY}  # each as measured alone
    assert one_core_server.ready_models() == []


def test_each_device_of_a_plan_is_measured_and_added_to_the_profile_already_there(
    one_core_server: TritonServer, tmp_path: Path  # noqa: F811
) -> None:
    out = tmp_path / "profile.yaml"
    out.write_text("server_baseline: {peak_gpu_memory_bytes: 80MiB}\nmodels:\n"
                   "  - {model: light-a, throughput_per_second: 8, peak_gpu_memory_bytes: 50MiB}\n")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"devices": [
        {"name": "cpu-1", "copies": [{"model": m.name, "config": "profiled", "rate_per_second": 5} for m in LIGHT]},
        {"name": "cpu-2", "copies": [{"model": HEAVY[0].name, "config": "profiled", "rate_per_second": 5}]}]}))

    result = gpupack("profile", "--colocate-from-plan", str(plan), "--server", one_core_server.http_url, *MEASURE,
                     "--out", str(out))

    assert result.returncode == 0, result.stdout + result.stderr
    profile = load_profile(out)
    [colocation] = profile.colocations  # a device of one model is no group
    assert colocation.group == {m.name for m in LIGHT}
    assert all(m.together.request_rate_per_second == 5 for m in colocation.models)
    kept = next(m for m in profile.models if m.model == "light-a")
    assert kept.throughput_per_second == 8  # the profile's own entry, untouched
    assert {m.model for m in profile.models} == {m.name for m in LIGHT}
    assert one_core_server.ready_models() == []


def test_a_recorded_group_of_one_model_is_refused_naming_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text("server_baseline: {peak_gpu_memory_bytes: 80MiB}\nmodels: []\ncolocations:\n"
                    "  - peak_gpu_memory_bytes: 200MiB\n    models:\n"
                    "      - {model: light-a, request_rate_per_second: 5, throughput_per_second: 5}\n")

    with pytest.raises(InputError, match=r"profile.yaml:5: colocations\[0\]\.models: must list the two or more"):
        load_profile(path)
