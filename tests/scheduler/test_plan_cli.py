import json
from pathlib import Path

import pytest

from gpupack.app.cli import main

SEED = str(Path(__file__).resolve().parents[2] / "examples" / "seed-profile.yaml")
RESOURCES = ("gpu_memory", "gpu_utilization", "memory_bandwidth_utilization")


def policies(tmp_path, percent, resources=RESOURCES):
    path = tmp_path / f"policies-{percent}.yaml"
    path.write_text("policies:\n" + "".join(
        f"  - {{name: {r}-{percent}, resource: {r}, max: {percent}%}}\n" for r in resources
    ))
    return str(path)


def plan(capsys, *args):
    status = main(["plan", "--profile", SEED, "--device-memory", "16GiB", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_by_default_no_device_is_planned_above_100_percent_of_any_resource_six_proven(capsys):
    status, out, _ = plan(capsys, "--format", "json")
    document = json.loads(out)
    assert (status, document["device_count"], document["optimal"]) == (0, 6, True)
    assert document["limited_resources"] == list(RESOURCES)
    for device in document["devices"]:
        assert device["limits"] == {"gpu_memory_bytes": 16 * 2**30, "gpu_utilization_ratio": 1.0,
                                    "memory_bandwidth_utilization_ratio": 1.0}
        assert all(device["totals"][field] <= limit for field, limit in device["limits"].items())
    status, out, _ = plan(capsys)
    assert "6 devices (proven optimal" in out
    assert "Limits: 100% of each device's memory, utilization and bandwidth, or a policy's lower limit." in out


def test_case_study_1_memory_only_is_asked_for_by_name_four_devices_proven(capsys):
    status, out, _ = plan(capsys, "--resources", "memory", "--format", "json")
    document = json.loads(out)
    assert status == 0
    assert (document["device_count"], document["lower_bound"], document["optimal"]) == (4, 4, True)
    assert document["limited_resources"] == ["gpu_memory"]
    placed = sorted(m for d in document["devices"] for m in d["models"])
    assert len(placed) == 9
    assert all(d["totals"]["gpu_memory_bytes"] <= 16 * 2**30 for d in document["devices"])
    status, out, _ = plan(capsys, "--resources", "memory")
    assert "4 devices (proven optimal" in out
    assert "Limits: memory only (--resources memory); utilization and bandwidth not limited unless a policy" in out


def test_the_limits_line_cites_where_the_resources_were_chosen(capsys, tmp_path, monkeypatch):
    config = tmp_path / "gpupack.yaml"
    config.write_text("plan:\n  resources: memory\n")
    status = main(["--config", str(config), "plan", "--profile", SEED, "--device-memory", "16GiB"])
    out, _ = capsys.readouterr()
    assert status == 0 and f"Limits: memory only (plan.resources in {config}:2: memory);" in out
    monkeypatch.setenv("GPUPACK_PLAN_RESOURCES", "memory,utilization")
    status, out, _ = plan(capsys)
    assert "Limits: memory and utilization only (GPUPACK_PLAN_RESOURCES: memory,utilization);" in out


def test_resources_must_include_memory_and_be_known(capsys):
    status, _, err = plan(capsys, "--resources", "utilization")
    assert status == 2 and "--resources: memory is always limited" in err and "memory,utilization" in err
    status, _, err = plan(capsys, "--resources", "memory,power")
    assert status == 2 and "unknown resource 'power'" in err and "bandwidth" in err


def test_case_study_2_all_three_at_100_percent_needs_six_proven(capsys, tmp_path):
    status, out, _ = plan(capsys, "--policies", policies(tmp_path, 100), "--format", "json")
    document = json.loads(out)
    assert (status, document["device_count"], document["optimal"]) == (0, 6, True)
    assert all(d["totals"]["gpu_utilization_ratio"] <= 1 for d in document["devices"])
    assert "at_full_capacity" not in document


def test_plan_says_what_the_80_percent_rule_costs(capsys, tmp_path):
    status, out, _ = plan(capsys, "--policies", policies(tmp_path, 80))
    assert status == 0
    assert "8 devices (proven optimal" in out
    assert ("Capacity policies gpu_memory-80, gpu_utilization-80, memory_bandwidth_utilization-80 "
            "cost 2 more devices: 8 under them, 6 at 100% of capacity.") in out


def test_table_shows_memory_in_gib_with_the_server_and_each_share_of_the_limit(capsys, tmp_path):
    status, out, _ = plan(capsys, "--policies", policies(tmp_path, 80, ["gpu_memory"]))
    header, *rows = out.splitlines()
    assert header.split()[:2] == ["device", "models"] and "gpu memory with server" in header
    assert header.count("% of limit") == 3 and "MB" not in out
    devices = [row.split() for row in rows if row.startswith("gpu-")]
    assert len(devices) == 7
    for *_, memory, unit, memory_share, util, util_share, bandwidth, bandwidth_share in devices:
        # Memory against the policy's 80% of 16 GiB; utilisation and bandwidth against 100%.
        assert unit == "GiB" and abs(int(memory_share[:-1]) - float(memory) / 12.8 * 100) <= 1
        assert (util, bandwidth) == (util_share, bandwidth_share)


def test_plot_is_written(capsys, tmp_path):
    status, _, _ = plan(capsys, "--plot", str(tmp_path / "plan.png"))
    assert status == 0 and (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"


def test_model_bigger_than_any_device_exits_1_naming_it(capsys, tmp_path):
    status, out, err = plan(capsys, "--device-memory", "10GB", "--policies", policies(tmp_path, 80, ["gpu_memory"]))
    assert status == 1 and out == ""
    assert "model segmentation_ct_liver needs" in err and "(gpu_memory-80)" in err


def test_devices_file_with_unmatched_pin_exits_1_naming_the_policy(capsys, tmp_path):
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  - {name: t4, memory: 16GiB, count: 9, labels: {class: T4}}\n")
    pin = tmp_path / "pin.yaml"
    pin.write_text("policies:\n  - {name: liver-on-a100, selector: {models: [segmentation_ct_liver]}, pin: {labels: {class: A100}}}\n")
    status = main(["plan", "--profile", SEED, "--devices-file", str(devices), "--policies", str(pin)])
    err = capsys.readouterr().err
    assert status == 1
    assert "model segmentation_ct_liver: no device it may run on is left by policy liver-on-a100" in err


@pytest.mark.parametrize(
    "content, where",
    [
        ("server_baseline: {}\nmodels:\n  - {model: a, peak_gpu_memory_bytes: 12 parsecs}\n",
         "profile.yaml:3: models[0].peak_gpu_memory_bytes"),
        ("server_baseline: {}\nmodels:\n  - {model: a, peak_gpu_memory_bytes: 1GB, peak_gpu_utilization_ratio: 2}\n",
         "profile.yaml:3: models[0].peak_gpu_utilization_ratio"),
    ],
)
def test_bad_profile_exits_2_naming_file_line_field(capsys, tmp_path, content, where):
    (tmp_path / "profile.yaml").write_text(content)
    status = main(["plan", "--profile", str(tmp_path / "profile.yaml"), "--device-memory", "16GiB"])
    assert status == 2
    assert str(tmp_path / where) in capsys.readouterr().err


def test_bad_devices_file_and_objective_exit_2(capsys, tmp_path):
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  - name: t4\n    memory: 16 parsecs\n")
    assert main(["plan", "--profile", SEED, "--devices-file", str(devices)]) == 2
    assert f"{devices}:3: devices[0].memory" in capsys.readouterr().err
    assert main(["plan", "--profile", SEED, "--device-memory", "16GiB", "--objective", "fastest"]) == 2
    assert "min-devices" in capsys.readouterr().err


def _seg_cls_profile(tmp_path):
    rows = [f"  - {{model: seg_{k}, peak_gpu_memory_bytes: 3GiB, peak_memory_bandwidth_utilization_ratio: 45%}}\n"
            for k in range(6)]
    rows += [f"  - {{model: cls_{k}, peak_gpu_memory_bytes: 2GiB, peak_memory_bandwidth_utilization_ratio: 60%}}\n"
             for k in range(6)]
    path = tmp_path / "seg-cls.yaml"
    path.write_text("server_baseline: {}\nmodels:\n" + "".join(rows))
    return str(path)


def test_a_capacity_policy_for_some_models_counts_only_them_three_devices_proven(capsys, tmp_path):
    policy = tmp_path / "seg.yaml"
    policy.write_text('policies:\n  - {name: seg-bw, resource: memory_bandwidth_utilization, max: 100%, '
                      'selector: {models: ["seg_*"]}}\n')
    # Memory only but for the policy: the cls_ models' bandwidth is not limited.
    status = main(["plan", "--profile", _seg_cls_profile(tmp_path), "--device-memory", "16GiB",
                   "--policies", str(policy), "--resources", "memory", "--format", "json"])
    document = json.loads(capsys.readouterr().out)
    assert (status, document["device_count"], document["optimal"]) == (0, 3, True)
    for device in document["devices"]:
        assert sum(m.startswith("seg_") for m in device["models"]) <= 2


def test_an_alert_policy_that_cannot_hold_blocks_plan_unless_soft_alerts_and_is_then_listed(capsys, tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("policies:\n  - {name: one-gpu, max_devices: 1}\n"
                      "  - {name: mem-90, resource: gpu_memory, max: 90%, action: rebalance}\n")
    args = ["plan", "--profile", _seg_cls_profile(tmp_path), "--device-memory", "16GiB", "--policies", str(policy),
            "--resources", "memory"]
    assert main(args) == 1
    assert "one-gpu" in capsys.readouterr().err
    assert main([*args, "--soft-alerts", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["device_count"] == 3 and document["alert_policies_broken"] == ["one-gpu"]
    assert main([*args, "--soft-alerts"]) == 0
    assert "Alert policies this plan breaks (no plan keeps them all): one-gpu." in capsys.readouterr().out


def test_a_devices_file_says_which_servers_run_where_so_server_scoped_policies_plan(capsys, tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("server_baseline: {peak_gpu_memory_bytes: 0}\nmodels:\n"
                       "  - {model: m1, peak_gpu_memory_bytes: 4GiB}\n  - {model: m2, peak_gpu_memory_bytes: 6GiB}\n")
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  - {name: d1, memory: 16GiB, servers: [triton-a]}\n"
                       "  - {name: d2, memory: 16GiB, servers: [triton-b]}\n")
    rules = tmp_path / "policies.yaml"
    rules.write_text("policies:\n"
                     "  - {name: m1-on-b, selector: {models: [m1]}, pin: {servers: [triton-b]}}\n"
                     "  - {name: a-small, resource: gpu_memory, max: 30%, selector: {servers: [triton-a]}}\n")
    status = main(["plan", "--profile", str(profile), "--devices-file", str(devices), "--policies", str(rules),
                   "--format", "json"])
    document = json.loads(capsys.readouterr().out)
    # The pin sends m1 to triton-b's device; 6 GiB is over 30% of triton-a's: both on d2.
    assert status == 0
    assert {d["name"]: sorted(d["models"]) for d in document["devices"]} == {"d2": ["m1", "m2"]}


def test_servers_in_a_devices_file_name_one_device(capsys, tmp_path):
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  - {name: t4, memory: 16GiB, count: 2, servers: [a]}\n")
    assert main(["plan", "--profile", SEED, "--devices-file", str(devices)]) == 2
    assert f"{devices}:2: devices[0].servers: servers run on one device" in capsys.readouterr().err
