"""What `gpupack plan` tells a user when a model cannot be placed, an input is wrong, or a plan
is one device: nothing left out in silence, every message in words a person reads."""

import json
from pathlib import Path

import pytest

from gpupack.app.cli import build_parser, main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED, SEED_DEMAND = str(EXAMPLES / "seed-profile.yaml"), str(EXAMPLES / "seed-demand.yaml")
REJECTED = """\
server_baseline: {peak_gpu_memory_bytes: 300MB}
models:
  - {model: small, peak_gpu_memory_bytes: 1GB}
  - model: segmentation_ct_liver
    configs: []
    rejected:
      - {name: i1-b1, reason: p99 72 ms is over the 50 ms budget}
      - {name: i2-b4-dyn, reason: out of memory}
"""


def plan(capsys, *args, profile=SEED):
    status = main(["plan", "--profile", profile, "--device-memory", "16GiB", *args])
    out, err = capsys.readouterr()
    return status, out, err


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_model_with_no_configuration_within_its_constraints_is_refused_by_name_exit_1(capsys, tmp_path):
    status, out, err = plan(capsys, profile=write(tmp_path, "profile.yaml", REJECTED))
    assert (status, out) == (1, "")
    assert ("model segmentation_ct_liver has no configuration within its constraints "
            "(i1-b1: p99 72 ms is over the 50 ms budget, i2-b4-dyn: out of memory)") in err


def test_a_profile_with_no_models_is_bad_input_exit_2(capsys, tmp_path):
    profile = write(tmp_path, "empty.yaml", "server_baseline: {}\nmodels: []\n")
    status, out, err = plan(capsys, profile=profile)
    assert (status, out) == (2, "")
    assert f"{profile}: the profile has no models to place" in err


def test_a_plan_of_one_device_says_one_device_and_a_demand_rate_may_carry_its_unit(capsys, tmp_path):
    profile = write(tmp_path, "one.yaml", "server_baseline: {}\nmodels:\n"
                    "  - {model: a, peak_gpu_memory_bytes: 1GiB, throughput_per_second: 100}\n")
    status, out, _ = plan(capsys, profile=profile)
    assert status == 0 and "\n1 device (proven optimal" in out and "1 devices" not in out
    demand = write(tmp_path, "demand.yaml", "demand:\n  - {model: a, rate_per_second: 20/s}\n")
    status, out, _ = plan(capsys, "--demand", demand, profile=profile)
    assert status == 0 and "1 devices" not in out
    assert "1. every model at its profiled peak, one copy: 1 device (proven optimal" in out
    assert ["a", "profiled", "1", "100", "20", "400%"] in [line.split() for line in out.splitlines()]


def test_a_device_memory_without_a_unit_is_exit_2_naming_the_flag_and_the_fix(capsys):
    status = main(["plan", "--profile", SEED, "--device-memory", "16"])
    err = capsys.readouterr().err
    assert status == 2
    assert "--device-memory: '16' has no unit" in err and "write 80GiB or 512MiB" in err


def test_an_unknown_objective_is_named_with_the_known_ones(capsys):
    status, _, err = plan(capsys, "--objective", "fewest")
    assert status == 2
    assert "--objective: 'fewest' is not an objective (known: min-devices, min-cost, balance, min-moves)" in err
    assert "Objective" not in err


@pytest.mark.parametrize("demand", [False, True])
def test_plot_says_where_it_wrote(capsys, tmp_path, demand):
    path = tmp_path / "plan.png"
    status, _, err = plan(capsys, "--plot", str(path), *(["--demand", SEED_DEMAND] if demand else []))
    assert status == 0 and path.read_bytes()[:4] == b"\x89PNG"
    assert f"wrote plot to {path}" in err


def test_the_demand_plan_holds_every_device_within_100_percent_six_devices_proven(capsys):
    status, out, _ = plan(capsys, "--demand", SEED_DEMAND, "--format", "json")
    document = json.loads(out)
    assert (status, document["device_count"], document["optimal"]) == (0, 6, True)
    assert document["proof"]["status"] == "optimal" and document["time_limit_seconds"] == 10
    for device in document["devices"]:
        assert all(device["totals"][field] <= limit for field, limit in device["limits"].items())


def test_the_demand_plan_with_memory_only_is_case_study_1_and_says_so(capsys):
    status, out, _ = plan(capsys, "--demand", SEED_DEMAND, "--resources", "memory")
    assert status == 0
    assert "\n4 devices (proven optimal" in out
    assert "Limits: memory only (--resources memory)" in out
    assert "\nTime: " in out


def test_plan_help_is_written_for_users(capsys):
    parser = build_parser("plan")
    with pytest.raises(SystemExit):
        parser.parse_args(["plan", "--help"])
    text = capsys.readouterr().out
    for developer_note in ("PLAN_SHARE", ":func:", ":data:", "``", "gpupack.", "`gpupack plan`"):
        assert developer_note not in text
    assert "--resources NAME,..." in text and "--plot FILE" in text and "FILE.png" not in text
    assert "exit status: 0 ok" in text
