"""What users see: /metrics series, log lines per transition, rebalance requests, table and JSON."""

from __future__ import annotations

import json
import logging
import re
from typing import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gpupack.app.cli import main
from gpupack.domain import Resource
from gpupack.rules.evaluator import evaluate
from gpupack.rules.metrics import RulesCollector, RulesState
from gpupack.rules.peaks import snapshot_from_json
from gpupack.rules.policy import Action, CapacityPolicy, PolicySet, Severity
from gpupack.rules.transitions import RequestOutcome, ViolationTracker

from tests.rules.conftest import write_policies

MEMORY_80 = CapacityPolicy("gpu-memory-80", resource=Resource.GPU_MEMORY, max_ratio=0.8,
                           severity=Severity.CRITICAL, action=Action.REBALANCE)
POLICIES = PolicySet((MEMORY_80,))


def scrape(state: RulesState) -> str:
    registry = CollectorRegistry()
    registry.register(RulesCollector(lambda: state))
    return generate_latest(registry).decode()


def test_metrics_show_violations_headroom_duration_and_errors(seed_document):
    evaluation = evaluate(snapshot_from_json(seed_document, "f"), POLICIES)
    text = scrape(RulesState(evaluation, 0.25, 3, True))
    assert 'gpupack_policy_violation{device="GPU-4",model="",policy="gpu-memory-80",severity="critical"} 1.0' in text
    assert 'device="GPU-1",model=""' not in text  # ok devices have no violation series
    assert 'gpupack_policy_headroom_ratio{device="GPU-1",policy="gpu-memory-80"} 0.12' in text
    assert "gpupack_rules_evaluation_duration_seconds 0.25" in text
    assert "gpupack_rules_evaluation_errors_total 3.0" in text
    assert "gpupack_rules_source_up 1.0" in text


def test_failed_fetch_exports_no_violation_and_no_headroom(seed_document):
    evaluation = evaluate(snapshot_from_json(seed_document, "f"), POLICIES)
    text = scrape(RulesState(evaluation, 0.1, 1, source_up=False))
    assert "gpupack_policy_violation{" not in text and "gpupack_policy_headroom_ratio{" not in text
    assert "gpupack_rules_source_up 0.0" in text


def recorder(requests: list) -> Callable[[tuple], RequestOutcome]:
    """A request function that records what it is asked and settles it."""
    def request(violations: tuple) -> RequestOutcome:
        requests.append(violations)
        return RequestOutcome.SETTLED
    return request


def events(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "gpupack.rules.transitions"]


def test_one_log_line_per_new_violation_and_per_resolution_and_one_rebalance_request(seed_document, caplog):
    requests = []
    tracker = ViolationTracker(request_rebalance=recorder(requests))
    caplog.set_level(logging.INFO, logger="gpupack.rules.transitions")
    snapshot = snapshot_from_json(seed_document, "f")
    tracker.update(evaluate(snapshot, POLICIES))
    tracker.update(evaluate(snapshot, POLICIES))  # still violated: nothing new
    first = events(caplog)
    assert [(e["event"], e["device"]) for e in first] == [("violation", "GPU-3"), ("violation", "GPU-4")]
    assert first[1]["value"] == 15225e6 and first[1]["severity"] == "critical"
    assert [[r.device for r in request] for request in requests] == [["GPU-3", "GPU-4"]]

    caplog.clear()
    relaxed = PolicySet((CapacityPolicy("gpu-memory-80", resource=Resource.GPU_MEMORY, max_ratio=0.9),))
    tracker.update(evaluate(snapshot, relaxed))
    assert [(e["event"], e["device"]) for e in events(caplog)] == [("resolved", "GPU-3"), ("resolved", "GPU-4")]
    assert len(requests) == 1


def test_unknown_does_not_resolve_a_violation(seed_document, caplog):
    tracker = ViolationTracker(request_rebalance=recorder([]))
    tracker.update(evaluate(snapshot_from_json(seed_document, "f"), POLICIES))
    caplog.set_level(logging.INFO, logger="gpupack.rules.transitions")
    caplog.clear()
    seed_document["devices"][3]["stale"] = True  # GPU-4
    tracker.update(evaluate(snapshot_from_json(seed_document, "f"), POLICIES))
    assert events(caplog) == []
    assert ("gpu-memory-80", "GPU-4", "") in tracker.active


def test_alert_policies_never_request_a_rebalance(seed_document):
    requests = []
    alert_only = PolicySet((CapacityPolicy("m", resource=Resource.GPU_MEMORY, max_ratio=0.8),))
    ViolationTracker(request_rebalance=recorder(requests)).update(evaluate(snapshot_from_json(seed_document, "f"), alert_only))
    assert requests == []


POLICY_TEXT = "policies:\n  - name: gpu-memory-80\n    resource: gpu_memory\n    max: 80%\n"


def cells(line: str) -> list[str]:
    """A table row's cells: columns are two or more spaces apart, a cell holds at most one."""
    return re.split(r"\s{2,}", line.strip())


def test_evaluate_once_prints_a_table_in_iec_units_with_share_of_limit_and_exits_1_when_violated(
        fake_exporter, tmp_path, capsys):
    policies = write_policies(tmp_path, POLICY_TEXT)
    status = main(["rules", "evaluate", "--once", "--policies", str(policies), "--exporter-url", fake_exporter.url])
    out = capsys.readouterr().out
    assert status == 1
    lines = out.splitlines()
    assert cells(lines[0]) == ["POLICY", "SEVERITY", "DEVICE", "MODEL", "VALUE", "LIMIT", "% OF LIMIT", "HEADROOM",
                               "STATUS"]
    # GPU-4 carries 15225 MB against 80% of 16 GiB: 111% of its limit.
    assert cells(lines[4]) == ["gpu-memory-80", "warning", "GPU-4", "-", "14.2 GiB", "12.8 GiB", "111%", "-9%",
                               "violated"]
    assert lines[-1] == "4 results: 2 ok, 2 violated, 0 unknown"


def test_evaluate_once_json_and_exit_0_when_nothing_is_violated(fake_exporter, tmp_path, capsys):
    policies = write_policies(tmp_path, POLICY_TEXT.replace("80%", "95%"))
    status = main(["rules", "evaluate", "--once", "--format", "json", "--policies", str(policies),
                   "--exporter-url", fake_exporter.url])
    document = json.loads(capsys.readouterr().out)
    assert status == 0 and document["violated"] == 0
    assert document["results"][0] == {"policy": "gpu-memory-80", "severity": "warning", "action": "alert",
                                      "device": "GPU-1", "model": None, "status": "ok", "resource": "gpu_memory",
                                      "value": 11681e6, "limit": pytest.approx(0.95 * 16 * 2**30),
                                      "headroom_ratio": pytest.approx(0.95 - 11681e6 / 2**34)}


def test_evaluate_with_an_exporter_that_fails_is_unknown_exit_3_not_a_violation(fake_exporter, tmp_path, capsys):
    fake_exporter.status = 503
    status = main(["rules", "evaluate", "--once", "--policies", str(write_policies(tmp_path, POLICY_TEXT)),
                   "--exporter-url", fake_exporter.url])
    assert status == 3
    assert capsys.readouterr().err == (f"gpupack rules: error: cannot reach the exporter at {fake_exporter.url}: "
                                       "/api/v1/peaks answered HTTP 503 Service Unavailable\n")


def test_missing_policies_setting_is_a_usage_error(capsys):
    assert main(["rules", "evaluate", "--once"]) == 2
    assert "no policies: give --policies FILE" in capsys.readouterr().err
