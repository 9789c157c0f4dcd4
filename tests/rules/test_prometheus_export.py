"""Exported alerting rules pass the real `promtool check rules` and `promtool test rules`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gpupack.app.cli import main

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool"),
]
EXAMPLES = Path(__file__).parents[2] / "rules" / "examples"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture
def exported(tmp_path: Path, capsys) -> tuple[Path, Path, str]:
    rules = tmp_path / "gpupack-rules.yaml"
    assert main(["rules", "export-prometheus", str(rules), "--policies", str(EXAMPLES)]) == 0
    return rules, tmp_path / "gpupack-rules.test.yaml", capsys.readouterr().err


def test_exported_rules_pass_promtool_check_and_unit_tests(exported):
    rules, tests, _ = exported
    checked = promtool("check", "rules", str(rules), cwd=rules.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(tests), cwd=rules.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_rules_follow_kube_prometheus_conventions_and_every_rule_has_a_test(exported):
    rules, tests, _ = exported
    alerts = yaml.safe_load(rules.read_text())["groups"][0]["rules"]
    memory = next(a for a in alerts if a["labels"]["policy"] == "gpu-memory-80")
    assert memory["alert"] == "GpupackGpuMemory80"
    assert memory["for"] == "300s" and memory["labels"]["severity"] == "critical"
    assert set(memory["annotations"]) == {"summary", "description", "runbook_url"}
    assert "gpupack_server_unattributed_memory_peak_bytes" in memory["expr"]
    assert "0.8 * gpupack_device_memory_total_bytes" in memory["expr"]
    tested = {t["alert_rule_test"][0]["alertname"] for t in yaml.safe_load(tests.read_text())["tests"]}
    assert tested == {a["alert"] for a in alerts}


def test_policies_the_series_cannot_express_are_skipped_with_a_reason(exported):
    rules, _, err = exported
    assert "skipped policy 'liver-on-big-gpus': it pins to device labels" in err
    assert "skipped policy 'segmentation-bandwidth': the exporter has no per-model memory_bandwidth_utilization series" in err
    names = {a["labels"]["policy"] for a in yaml.safe_load(rules.read_text())["groups"][0]["rules"]}
    assert "liver-on-big-gpus" not in names


def test_the_unit_tests_catch_a_wrong_threshold(exported):
    rules, tests, _ = exported
    rules.write_text(rules.read_text().replace("0.8 * gpupack_device_memory_total_bytes",
                                               "1.5 * gpupack_device_memory_total_bytes"))
    tested = promtool("test", "rules", str(tests), cwd=rules.parent)
    assert tested.returncode != 0
    assert "GpupackGpuMemory80" in tested.stdout + tested.stderr


GLOBS = """policies:
  - name: a100-memory-70gb
    resource: gpu_memory
    max: 70GB
    selector: {devices: ["GPU-a100.*"], servers: ["triton-[0-9]"]}
  - name: chest-on-gpu0
    selector: {models: [classification_chest]}
    pin: {devices: [GPU-0, GPU-1]}
    for: 1m
  - name: per-model-utilization
    resource: gpu_utilization
    per: model
    max: 50%
    severity: info
"""


def test_globs_sizes_and_device_pins_pass_promtool(tmp_path, capsys):
    policies = tmp_path / "p.yaml"
    policies.write_text(GLOBS)
    rules = tmp_path / "out.yaml"
    assert main(["rules", "export-prometheus", str(rules), "--policies", str(policies),
                 "--tests", str(tmp_path / "t.yaml")]) == 0
    assert "wrote 3 alerting rules" in capsys.readouterr().out
    assert promtool("check", "rules", str(rules), cwd=tmp_path).returncode == 0
    tested = promtool("test", "rules", str(tmp_path / "t.yaml"), cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


SERVER_SCOPED = """policies:
  - name: triton-a-memory
    resource: gpu_memory
    max: 1GB
    selector: {servers: [triton-a]}
    for: 1m
"""


def test_a_server_scoped_capacity_alert_judges_its_servers_devices_whole_as_the_evaluator_does(tmp_path, capsys):
    policies = tmp_path / "p.yaml"
    policies.write_text(SERVER_SCOPED)
    rules = tmp_path / "out.yaml"
    assert main(["rules", "export-prometheus", str(rules), "--policies", str(policies)]) == 0
    rule = yaml.safe_load(rules.read_text())["groups"][0]["rules"][0]
    def alert_on(device: str) -> dict:
        description = rule["annotations"]["description"].replace("{{ $labels.device }}", device)
        return {"exp_labels": {**rule["labels"], "device": device},
                "exp_annotations": {**rule["annotations"], "description": description}}

    series = [  # triton-a's model pushes GPU-0 over 1 GB; triton-b's server alone fills GPU-1 (not
        # triton-a's, so not judged); on GPU-2, shared, triton-a's 0.1 GB, triton-b's 0.6 GB and
        # triton-b's 0.4 GB model are over 1 GB together, as the evaluator counts a shared device.
        ('gpupack_server_unattributed_memory_peak_bytes{server="triton-a", device="GPU-0"}', "100000000x5"),
        ('gpupack_model_memory_peak_bytes{server="triton-a", model="m", version="1", device="GPU-0"}', "2000000000x5"),
        ('gpupack_model_memory_bytes{server="triton-a", model="m", version="1", device="GPU-0", source="process"}', "1x5"),
        ('gpupack_server_unattributed_memory_peak_bytes{server="triton-b", device="GPU-1"}', "5000000000x5"),
        ('gpupack_server_unattributed_memory_peak_bytes{server="triton-a", device="GPU-2"}', "100000000x5"),
        ('gpupack_server_unattributed_memory_peak_bytes{server="triton-b", device="GPU-2"}', "600000000x5"),
        ('gpupack_model_memory_peak_bytes{server="triton-b", model="n", version="1", device="GPU-2"}', "400000000x5"),
        ('gpupack_model_memory_bytes{server="triton-b", model="n", version="1", device="GPU-2", source="process"}', "1x5"),
    ]
    (tmp_path / "scoped.test.yaml").write_text(yaml.safe_dump({
        "rule_files": [rules.name], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series],
                   "alert_rule_test": [{"eval_time": "3m", "alertname": rule["alert"],
                                          "exp_alerts": [alert_on("GPU-0"), alert_on("GPU-2")]}]}],
    }, sort_keys=False, width=200))
    tested = promtool("test", "rules", "scoped.test.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


PER_MODEL_2GIB = """policies:
  - name: model-memory-2gib
    resource: gpu_memory
    per: model
    max: 2GiB
    for: 1m
"""


def test_a_model_at_exactly_its_limit_does_not_alert_and_one_byte_over_does(tmp_path):
    """The evaluator judges peak > limit; a limit written with six digits (2.14748e+09) fired on
    a model at exactly 2 GiB."""
    policies = tmp_path / "p.yaml"
    policies.write_text(PER_MODEL_2GIB)
    rules = tmp_path / "out.yaml"
    assert main(["rules", "export-prometheus", str(rules), "--policies", str(policies)]) == 0
    rule = yaml.safe_load(rules.read_text())["groups"][0]["rules"][0]
    assert rule["expr"].endswith("> 2.147483648e+09")
    description = rule["annotations"]["description"].replace("{{ $labels.model }}", "over").replace(
        "{{ $labels.device }}", "GPU-1")
    assert description == "Model over on GPU-1 peaks above its limit of 2.0 GiB."
    series = [
        ('gpupack_model_memory_peak_bytes{server="t", model="at", version="1", device="GPU-0"}', "2147483648x5"),
        ('gpupack_model_memory_peak_bytes{server="t", model="over", version="1", device="GPU-1"}', "2147483649x5"),
    ]
    (tmp_path / "limit.test.yaml").write_text(yaml.safe_dump({
        "rule_files": [rules.name], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series],
                   "alert_rule_test": [{"eval_time": "3m", "alertname": rule["alert"], "exp_alerts": [{
                       "exp_labels": {**rule["labels"], "model": "over", "device": "GPU-1"},
                       "exp_annotations": {**rule["annotations"], "description": description}}]}]}],
    }, sort_keys=False, width=200))
    tested = promtool("test", "rules", "limit.test.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
