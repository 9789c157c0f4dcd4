"""The profile file a run leaves: every model asked for, the measured ones first, a rejected one with
each configuration and why, in YAML and JSON; CSV says what it cannot hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gpupack.domain import ModelFootprint, Resource
from gpupack.profiler.output import write_whole_profile
from gpupack.profiles import Profile

MIB = 2**20
PROFILE = Profile({Resource.GPU_MEMORY: 30.0 * MIB}, (ModelFootprint("fits", {Resource.GPU_MEMORY: 100.0 * MIB}),))
REJECTED = {"slow": [("i1-b1-dyn-off", "p99 210.0 ms at its lightest load is over the 100 ms budget")]}


@pytest.mark.parametrize("suffix, read", [(".yaml", yaml.safe_load), (".json", json.loads)])
def test_a_rejected_model_is_written_in_its_place_with_each_config_and_why(suffix: str, read, tmp_path: Path) -> None:
    out = tmp_path / f"profile{suffix}"

    assert write_whole_profile(PROFILE, REJECTED, out)

    models = read(out.read_text())["models"]
    assert [m["model"] for m in models] == ["fits", "slow"]
    assert models[1] == {"model": "slow", "configs": [], "rejected": [
        {"name": "i1-b1-dyn-off", "reason": "p99 210.0 ms at its lightest load is over the 100 ms budget"}]}
    assert models[0]["peak_gpu_memory_bytes"] == 100 * MIB
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no staging file left


def test_notes_go_at_the_top_of_a_yaml_profile_as_comments(tmp_path: Path) -> None:
    out = tmp_path / "profile.yaml"

    write_whole_profile(PROFILE, {}, out, notes=("measured on a shared server",))

    assert out.read_text().startswith("# measured on a shared server\n")
    assert yaml.safe_load(out.read_text())["models"][0]["model"] == "fits"


def test_a_csv_profile_says_it_could_not_hold_a_rejected_model(tmp_path: Path) -> None:
    out = tmp_path / "profile.csv"

    assert not write_whole_profile(PROFILE, REJECTED, out)
    assert "fits" in out.read_text()
