"""`gpupack rules` as a user meets it: sizes need units, an unreachable dependency is exit 3 in one
line, a policy that matches nothing is shown, and the help speaks to users (issue 24)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpupack.rules.loop import PolicyFile, RulesEngine
from gpupack.rules.peaks_source import ExporterSource
from gpupack.triton.launcher import free_port

from tests.rules.conftest import FakeExporter, write_policies

ROOT = Path(__file__).parents[2]
SEED_PROFILE = ROOT / "examples" / "seed-profile.yaml"
HINT = "a size needs one (write 80GiB or 512MiB; a share of the device is a ratio, like 80%)"
MEMORY_80 = "policies:\n  - name: gpu-memory-80\n    resource: gpu_memory\n    max: 80%\n"


def gpupack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpupack", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def closed_url() -> str:
    """A loopback URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


# Sizes need a unit --------------------------------------------------------------------------------

def test_a_bare_number_on_a_memory_policy_is_refused_with_a_hint_rather_than_read_as_80_bytes(tmp_path, fake_exporter):
    policies = write_policies(tmp_path, "policies:\n  - name: m\n    resource: gpu_memory\n    max: 80\n")
    check = gpupack("rules", "check", str(policies))
    assert check.returncode == 2
    assert check.stderr == f"gpupack rules: error: {policies}:4: policies[0].max: 80 has no unit: {HINT}\n"
    evaluation = gpupack("rules", "evaluate", "--policies", str(policies), "--exporter-url", fake_exporter.url)
    assert (evaluation.returncode, evaluation.stdout) == (2, "")  # nothing judged against "80 B"


def test_a_bare_number_for_a_device_size_in_a_placement_file_is_refused(tmp_path):
    placement = tmp_path / "placement.yaml"
    placement.write_text("devices:\n  - {name: GPU-0, capacity: {gpu_memory: 16}}\n"
                         "placement:\n  classification_chest: [GPU-0]\n")
    result = gpupack("rules", "evaluate", "--policies", str(write_policies(tmp_path, MEMORY_80)),
                     "--source", "profile", "--profile", str(SEED_PROFILE), "--placement", str(placement))
    assert result.returncode == 2
    assert result.stderr == f"gpupack rules: error: {placement}:2: devices[0].capacity.gpu_memory: 16 has no unit: {HINT}\n"


# A dependency that does not answer: exit 3, one line naming it and its URL --------------------------

def test_evaluate_with_the_exporter_down_is_exit_3_in_one_line_naming_the_exporter_and_its_url(tmp_path):
    url = closed_url()
    result = gpupack("rules", "evaluate", "--policies", str(write_policies(tmp_path, MEMORY_80)), "--exporter-url", url)
    assert result.returncode == 3
    assert result.stderr == f"gpupack rules: error: cannot reach the exporter at {url}: connection refused\n"
    assert result.stdout == ""


def test_evaluate_with_prometheus_down_is_exit_3_naming_prometheus(tmp_path):
    url = closed_url()
    result = gpupack("rules", "evaluate", "--policies", str(write_policies(tmp_path, MEMORY_80)),
                     "--source", "prometheus", "--prometheus-url", url)
    assert result.returncode == 3
    assert result.stderr == f"gpupack rules: error: cannot reach Prometheus at {url}: connection refused\n"


def test_evaluate_with_the_demand_prometheus_down_is_exit_3(tmp_path):
    placement = tmp_path / "placement.yaml"
    placement.write_text("devices:\n  - {name: GPU-0, capacity: {gpu_memory: 16GiB}}\n"
                         "placement:\n  classification_chest: [GPU-0]\n")
    url = closed_url()
    policies = write_policies(tmp_path, "policies:\n  - {name: serve, resource: throughput, min: 100%}\n")
    result = gpupack("rules", "evaluate", "--policies", str(policies), "--source", "profile",
                     "--profile", str(SEED_PROFILE), "--placement", str(placement), "--demand-from-prometheus", url)
    assert result.returncode == 3
    assert result.stderr == f"gpupack rules: error: cannot reach Prometheus at {url}: connection refused\n"


def test_an_exporter_url_that_is_no_url_is_bad_input(tmp_path):
    result = gpupack("rules", "evaluate", "--policies", str(write_policies(tmp_path, MEMORY_80)),
                     "--exporter-url", "127.0.0.1:9478")
    assert result.returncode == 2
    assert result.stderr == ("gpupack rules: error: the exporter: '127.0.0.1:9478' is not an http:// or https:// "
                             "URL\n")


# Nothing judged in silence ----------------------------------------------------------------------

NO_MATCH = """\
policies:
  - name: a100-memory
    selector: {labels: {class: A100-80GB}}
    resource: gpu_memory
    max: 90%
  - name: fleet
    max_devices: 8
"""


def test_a_policy_whose_selector_matches_no_device_is_shown_as_no_match_and_is_not_a_violation(
        tmp_path, fake_exporter):
    policies = write_policies(tmp_path, NO_MATCH)
    table = gpupack("rules", "evaluate", "--policies", str(policies), "--exporter-url", fake_exporter.url)
    assert table.returncode == 0, table.stderr
    rows = [re.split(r"\s{2,}", line) for line in table.stdout.splitlines()]
    assert rows[1] == ["a100-memory", "warning", "-", "-", "-", "-", "-", "-", "no match"]
    assert table.stdout.endswith(
        "2 results: 1 ok, 0 violated, 0 unknown, 1 no match\n"
        f"no match: a100-memory ({policies}:2): no device matches its selector (labels: class=A100-80GB)\n")

    as_json = gpupack("rules", "evaluate", "--format", "json", "--policies", str(policies),
                      "--exporter-url", fake_exporter.url)
    assert as_json.returncode == 0
    (record, _) = json.loads(as_json.stdout)["results"]
    assert record == {"policy": "a100-memory", "severity": "warning", "action": "alert", "device": None,
                      "model": None, "status": "no match", "selector": {"labels": {"class": "A100-80GB"}},
                      "where": f"{policies}:2", "resource": "gpu_memory"}


def test_a_pin_of_models_that_are_not_loaded_is_shown_as_no_match(tmp_path, fake_exporter):
    policies = write_policies(tmp_path, "policies:\n  - name: llm-on-a100\n    selector: {models: ['llm_*']}\n"
                                        "    pin: {labels: {class: A100-80GB}}\n")
    result = gpupack("rules", "evaluate", "--policies", str(policies), "--exporter-url", fake_exporter.url)
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == (f"no match: llm-on-a100 ({policies}:2): no loaded model matches its "
                                              "selector (models: llm_*)")


# Help and wording ---------------------------------------------------------------------------------

def test_evaluate_runs_once_without_being_told_once(tmp_path, fake_exporter):
    result = gpupack("rules", "evaluate", "--policies", str(write_policies(tmp_path, MEMORY_80)),
                     "--exporter-url", fake_exporter.url)
    assert result.returncode == 1  # GPU-3 and GPU-4 are over 80%
    assert result.stdout.splitlines()[-1] == "4 results: 2 ok, 2 violated, 0 unknown"


def test_counts_are_in_the_singular_for_one(tmp_path):
    policies = write_policies(tmp_path, MEMORY_80)
    assert gpupack("rules", "check", str(policies)).stdout == f"{policies}: 1 policy OK\n"
    rules = tmp_path / "alerts.yaml"
    result = gpupack("rules", "export-prometheus", str(rules), "--policies", str(policies))
    assert result.stdout == f"wrote 1 alerting rule to {rules} and their tests to {tmp_path / 'alerts.test.yaml'}\n"


METAVARS = {"FILE", "URL", "SIZE", "DURATION", "N", "NAME=URL", "HOST:PORT", "DIR", "SPEC",
            "exporter|prometheus|profile", "{table,json}"}
DEVELOPER_NOTES = re.compile(r"`|:func:|:class:|gpupack\.[a-z]|PLAN_SHARE|\.py\b")


@pytest.mark.parametrize("action", ["", "check", "evaluate", "export-prometheus", "run"])
def test_help_is_for_users_with_the_same_metavars_everywhere(action):
    result = gpupack("rules", *([action] if action else []), "--help")
    assert result.returncode == 0
    assert not DEVELOPER_NOTES.search(result.stdout), DEVELOPER_NOTES.search(result.stdout)
    usage = result.stdout.split("\n\n")[0]
    metavars = set(re.findall(r"\[--[a-z-]+ ([^\]|]+(?:\|[^\]]+)?)\]", usage))
    assert metavars <= METAVARS, metavars - METAVARS
    assert "--once" not in usage or "[--once]" in usage  # accepted, never required


def test_the_loop_keeps_serving_when_the_exporter_is_down(tmp_path, seed_document):
    """Exit 3 is for one-shot commands: the engine counts the failed fetch and keeps going."""
    exporter = FakeExporter(seed_document)
    engine = RulesEngine(ExporterSource(exporter.url), PolicyFile(write_policies(tmp_path, MEMORY_80)).current)
    engine.evaluate_once()
    exporter.close()
    engine.evaluate_once()
    state = engine.state()
    assert (state.source_up, state.errors_total) == (False, 1)
    assert len(state.evaluation.violations) == 2  # the last good evaluation is kept


def test_an_exported_alert_for_a_size_limit_states_it_in_gib(tmp_path):
    policies = write_policies(tmp_path, "policies:\n  - name: memory-12g\n    resource: gpu_memory\n    max: 12GiB\n")
    rules = tmp_path / "alerts.yaml"
    assert gpupack("rules", "export-prometheus", str(rules), "--policies", str(policies)).returncode == 0
    (alert,) = yaml.safe_load(rules.read_text())["groups"][0]["rules"]
    assert alert["annotations"]["description"].endswith("exceed 12.0 GiB.")
