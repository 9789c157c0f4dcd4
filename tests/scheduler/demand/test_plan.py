import json
from pathlib import Path

import pytest
import yaml

from gpupack.app.cli import main

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SEED, SEED_DEMAND = str(EXAMPLES / "seed-profile.yaml"), EXAMPLES / "seed-demand.yaml"
RESOURCES = ("gpu_memory", "gpu_utilization", "memory_bandwidth_utilization")
TUNED = """\
server_baseline: {peak_gpu_memory_bytes: 0}
models:
  - model: detector
    peak_gpu_memory_bytes: 8GB
    configs:
      - name: big
        peak_gpu_memory_bytes: 8GB
        points:
          - {throughput_per_second: 200, latency_p99_seconds: 40ms, peak_gpu_utilization_ratio: 80%}
          - {throughput_per_second: 400, latency_p99_seconds: 90ms, peak_gpu_utilization_ratio: 100%}
      - name: small
        peak_gpu_memory_bytes: 2GB
        points:
          - {throughput_per_second: 50, latency_p99_seconds: 20ms, peak_gpu_utilization_ratio: 40%}
  - model: ranker
    peak_gpu_memory_bytes: 6GB
    configs:
      - name: only
        peak_gpu_memory_bytes: 6GB
        points:
          - {throughput_per_second: 100, latency_p99_seconds: 10ms, peak_gpu_utilization_ratio: 50%}
"""


def policies(tmp_path, percent=100):
    path = tmp_path / "policies.yaml"
    path.write_text("policies:\n" + "".join(
        f"  - {{name: {r}-{percent}, resource: {r}, max: {percent}%}}\n" for r in RESOURCES))
    return str(path)


def demand_at(tmp_path, factor):
    document = yaml.safe_load(SEED_DEMAND.read_text())
    for row in document["demand"]:
        row["rate_per_second"] *= factor
    path = tmp_path / f"demand-{factor}.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def plan(capsys, *args, profile=SEED, memory="16GiB"):
    status = main(["plan", "--profile", profile, "--device-memory", memory, "--format", "json", *args])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if status == 0 else None), err


def test_article_throughputs_as_demand_reproduce_case_study_2_six_devices_proven(capsys, tmp_path):
    status, document, _ = plan(capsys, "--policies", policies(tmp_path), "--demand", str(SEED_DEMAND))
    assert status == 0
    assert (document["device_count"], document["lower_bound"], document["optimal"]) == (6, 6, True)
    copies = [c for d in document["devices"] for c in d["copies"]]
    assert sorted(c["model"] for c in copies) == sorted(m["model"] for m in document["models"])
    assert all(d["totals"]["gpu_utilization_ratio"] <= 1 and d["totals"]["memory_bandwidth_utilization_ratio"] <= 1
               for d in document["devices"])
    assert all(m["copies"] == 1 and m["headroom_ratio"] == 0 for m in document["models"])
    assert document["baselines"]["peak-one-copy"]["device_count"] == 6
    assert document["baselines"]["best-throughput-config"]["device_count"] == 6
    assert document["devices_saved"] == {"peak-one-copy": 0, "best-throughput-config": 0}


def test_at_a_quarter_of_the_demand_memory_binds_and_two_devices_are_saved_proven(capsys, tmp_path):
    status, document, _ = plan(capsys, "--policies", policies(tmp_path), "--demand", demand_at(tmp_path, 0.25))
    assert status == 0
    assert (document["device_count"], document["lower_bound"], document["optimal"]) == (4, 4, True)
    assert document["devices_saved"] == {"peak-one-copy": 2, "best-throughput-config": 2}
    chest = next(m for m in document["models"] if m["model"] == "classification_chest")
    assert chest["headroom_ratio"] == pytest.approx(3.0)
    rates = {c["model"]: c["rate_per_second"] for d in document["devices"] for c in d["copies"]}
    assert rates["classification_chest"] == pytest.approx(172.4 / 4)


def test_table_prints_the_three_plans_and_what_tuning_saved(capsys, tmp_path):
    status = main(["plan", "--profile", SEED, "--device-memory", "16GiB", "--policies", policies(tmp_path),
                   "--demand", demand_at(tmp_path, 0.25)])
    out = capsys.readouterr().out
    assert status == 0
    assert "1. every model at its profiled peak, one copy: 6 devices (proven optimal" in out
    assert "2. best-throughput config, copies for demand (Model Analyzer way): 6 devices (proven optimal" in out
    assert "3. joint: config and copies chosen for demand: 4 devices (proven optimal" in out
    assert out.count("Tuning for demand") == 1
    assert "Tuning for demand (plan 3) saves 2 devices against plan 1 and saves 2 devices against plan 2." in out
    assert "4 devices (proven optimal by the" in out.split("model  ")[1]  # the plan's own proof, under its table
    assert "Time: " in out and "demand plan" in out and "of the 10 s limit" in out


def test_an_extra_copy_splits_a_busy_model_and_saves_a_device_at_full_demand(capsys, tmp_path):
    status, document, _ = plan(capsys, "--policies", policies(tmp_path), "--demand", str(SEED_DEMAND), "--extra-copies", "1")
    assert (status, document["device_count"], document["optimal"]) == (0, 5, True)
    split = [m for m in document["models"] if m["copies"] == 2]
    assert split
    for model in split:
        holders = [d["name"] for d in document["devices"] if any(c["model"] == model["model"] for c in d["copies"])]
        assert len(holders) == 2  # copies of one model on distinct devices


def test_the_configuration_that_serves_the_demand_in_least_room_is_chosen(capsys, tmp_path):
    profile = tmp_path / "tuned.yaml"
    profile.write_text(TUNED)
    demand = tmp_path / "demand.yaml"
    demand.write_text("demand:\n  - {model: detector, rate_per_second: 90, latency_p99_seconds: 50ms}\n"
                      "  - {model: ranker, rate_per_second: 250, latency_p99_seconds: 50ms}\n")
    status, document, _ = plan(capsys, "--policies", policies(tmp_path), "--demand", str(demand), profile=str(profile),
                               memory="10GB")
    assert status == 0
    by_model = {m["model"]: m for m in document["models"]}
    # Two small copies (2 GB, 36% each at 45/s) beside the rankers, rather than one 8 GB big one.
    assert (by_model["detector"]["config"], by_model["detector"]["copies"]) == ("small", 2)
    assert (by_model["ranker"]["copies"], by_model["ranker"]["capacity_per_second"]) == (3, 300)
    assert (document["device_count"], document["optimal"]) == (3, True)
    assert document["baselines"]["best-throughput-config"]["device_count"] == 4
    assert document["devices_saved"]["best-throughput-config"] == 1


def test_demand_no_configuration_answers_in_time_names_the_model_and_exits_1(capsys, tmp_path):
    profile = tmp_path / "tuned.yaml"
    profile.write_text(TUNED)
    demand = tmp_path / "demand.yaml"
    demand.write_text("demand:\n  - {model: detector, rate_per_second: 10, latency_p99_seconds: 5ms}\n")
    status, _, err = plan(capsys, "--demand", str(demand), profile=str(profile))
    assert status == 1
    assert "model detector: no configuration answers within its p99 budget of 5 ms" in err
    assert "the fastest measured point takes 20 ms" in err


def test_demand_needing_more_copies_than_devices_names_the_model_and_exits_1(capsys, tmp_path):
    profile = tmp_path / "tuned.yaml"
    profile.write_text(TUNED)
    demand = tmp_path / "demand.yaml"
    demand.write_text("demand:\n  - {model: ranker, rate_per_second: 350}\n")
    status, _, err = plan(capsys, "--demand", str(demand), "--devices", "3", profile=str(profile))
    assert status == 1
    assert "model ranker: serving 350/s needs 4 copies of configuration 'only' (100/s each) on distinct devices" in err
    assert "only 3 devices may hold one" in err


def test_a_seed_profile_without_throughput_cannot_be_sized_for_demand(capsys, tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("server_baseline: {peak_gpu_memory_bytes: 0}\nmodels:\n  - {model: a, peak_gpu_memory_bytes: 1GB}\n")
    demand = tmp_path / "demand.yaml"
    demand.write_text("demand:\n  - {model: a, rate_per_second: 3}\n")
    status, _, err = plan(capsys, "--demand", str(demand), profile=str(profile))
    assert status == 1
    assert "model a: the profile has no measured throughput for it" in err


def test_demand_for_a_model_not_profiled_exits_2_naming_the_demand_file(capsys, tmp_path):
    demand = tmp_path / "demand.yaml"
    demand.write_text("demand:\n  - {model: classification_knee, rate_per_second: 3}\n")
    status, _, err = plan(capsys, "--demand", str(demand))
    assert status == 2
    assert f"{demand}: model 'classification_knee' is not in the profile" in err


def test_every_policy_holds_for_the_copies_pins_anti_affinity_replicas_as_fewest_copies(capsys, tmp_path):
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  - {name: t4, memory: 16GiB, count: 8, labels: {class: T4}}\n"
                       "  - {name: a100, memory: 80GiB, count: 2, labels: {class: A100}}\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text(Path(policies(tmp_path)).read_text() + (
        "  - {name: liver-on-a100, selector: {models: [segmentation_ct_liver]}, pin: {labels: {class: A100}}}\n"
        "  - {name: ct-apart, anti_affinity: [segmentation_ct_colon_tumor, segmentation_ct_pancreas,"
        " segmentation_ct_spleen]}\n"
        "  - {name: classifiers-twice, selector: {models: ['classification_*']}, replicas: 2}\n"))
    status = main(["plan", "--profile", SEED, "--devices-file", str(devices), "--policies", str(rules),
                   "--format", "json", "--demand", demand_at(tmp_path, 0.25)])
    out, err = capsys.readouterr()
    assert status == 0, err
    document = json.loads(out)
    holders: dict[str, list[str]] = {}
    for device in document["devices"]:
        for copy in device["copies"]:
            holders.setdefault(copy["model"], []).append(device["name"])
    assert all(name.startswith("a100") for name in holders["segmentation_ct_liver"])
    ct = [d for m in ("segmentation_ct_colon_tumor", "segmentation_ct_pancreas", "segmentation_ct_spleen")
          for d in holders[m]]
    assert len(ct) == len(set(ct)) == 3
    by_model = {m["model"]: m for m in document["models"]}
    for model in ("classification_breast", "classification_chest", "classification_malaria"):
        assert by_model[model]["copies"] == 2 and len(set(holders[model])) == 2
    assert all(d["totals"]["gpu_utilization_ratio"] <= 1 for d in document["devices"])


def test_a_fleet_limit_below_what_the_demand_needs_exits_1(capsys, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(Path(policies(tmp_path)).read_text() + "  - {name: three-gpus, max_devices: 3}\n")
    status, _, err = plan(capsys, "--policies", str(rules), "--demand", demand_at(tmp_path, 0.25))
    assert status == 1
    assert "three-gpus" in err


def test_least_cost_mixes_device_kinds_and_is_proven(capsys, tmp_path):
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  - {name: t4, memory: 16GiB, count: 8, cost: 1}\n"
                       "  - {name: a100, memory: 80GiB, count: 2, cost: 1.5}\n")
    status = main(["plan", "--profile", SEED, "--devices-file", str(devices), "--policies", policies(tmp_path),
                   "--format", "json", "--objective", "min-cost", "--demand", demand_at(tmp_path, 0.25)])
    out, err = capsys.readouterr()
    assert status == 0, err
    document = json.loads(out)
    # 52 GB of models at 123% utilisation: no single device and no two T4s hold them; one A100 and
    # one T4 (2.5) beat two A100s (3) and four T4s (4).
    assert sorted(d["name"] for d in document["devices"]) == ["a100-1", "t4-1"]
    assert document["optimal"] is True
