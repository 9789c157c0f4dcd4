"""3. For every constraint PromQL can express, `promtool test rules` on the exported rules fires
exactly the alerts the evaluator's violations name, on the same fleet as series.

The series are what the exporters publish: each placed model's memory and peaks, loaded by the
first server on its device; each server's baseline on each of its devices (the device's baseline
on the first, 0 on the others); each device's memory. Server scopes are generated for capacity
policies and pins only: the export filters the other kinds by the server that loaded a model,
the evaluator by the servers on its device, and the two agree only where each device has one
server. Replicas are not scoped to devices either: a model with no copy there has no series
for PromQL to count, while the evaluator counts it as 0.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpupack.domain import Placement
from gpupack.rules.compiled import compile_policies
from gpupack.rules.evaluator import Result, Status, evaluate
from gpupack.rules.peaks import ModelPeaks, PeaksSnapshot
from gpupack.rules.policy import CapacityPolicy, PinPolicy, PolicySet
from gpupack.rules.prometheus_export import NotExpressible, alert_rule

from tests.properties.fleets import MEM, UTIL, Case, cases

pytestmark = [pytest.mark.prometheus, pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")]


@st.composite
def judged_fleets(draw: st.DrawFn) -> tuple[Case, Placement]:
    case = draw(cases(exact=True))
    # The exporters publish no utilisation baseline: the evaluator reading them sees none either.
    devices = tuple(dataclasses.replace(d, server_baseline={MEM: d.server_baseline[MEM]}) for d in case.devices)
    policies = tuple(p if isinstance(p, (CapacityPolicy, PinPolicy))
                     else dataclasses.replace(p, selector=dataclasses.replace(p.selector, servers=()))
                     for p in case.policies.policies)
    names = [d.device.name for d in devices]
    placement = Placement({m.model: tuple(draw(st.sets(st.sampled_from(names), min_size=1, max_size=2)))
                           for m in case.models})
    return Case(devices, case.models, PolicySet(policies)), placement


def series(case: Case, placement: Placement) -> list[dict[str, str]]:
    items = []

    def add(name: str, labels: dict[str, str], value: float) -> None:
        text = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        items.append({"series": f"{name}{{{text}}}", "values": f"{value:.17g}x20"})  # exact, not 6 digits

    for d in case.devices:
        add("gpupack_device_memory_total_bytes", {"device": d.device.name}, d.device.capacity[MEM])
        for k, server in enumerate(d.servers):
            add("gpupack_server_unattributed_memory_peak_bytes", {"server": server, "device": d.device.name},
                d.server_baseline[MEM] if k == 0 else 0)
    servers = case.servers
    for m in case.models:
        for device in placement.assignments[m.model]:
            labels = {"server": servers[device][0], "model": m.model, "version": "1", "device": device}
            add("gpupack_model_memory_bytes", {**labels, "source": "process"}, m.peaks[MEM])
            add("gpupack_model_memory_peak_bytes", labels, m.peaks[MEM])
            add("gpupack_model_utilization_peak_ratio", labels, m.peaks[UTIL])
    return items


def evaluator_verdict(case: Case, placement: Placement) -> list[Result]:
    servers = case.servers
    snapshot = PeaksSnapshot(case.devices, tuple(
        ModelPeaks(m.model, d, m.peaks, servers[d][0], "1") for m in case.models for d in placement.assignments[m.model]))
    return [r for r in evaluate(snapshot, case.policies, placement).results if r.status is Status.VIOLATED]


def _labels(result: Result) -> dict[str, str]:
    """The labels of the alert a violation fires, by constraint kind: what the rule groups by."""
    return {k: v for k, v in (("model", result.model), ("device", result.device)) if v}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(judged_fleets())
def test_promtool_fires_exactly_the_alerts_the_evaluator_names(tmp_path: Path, fleet: tuple[Case, Placement]) -> None:
    case, placement = fleet
    violations = evaluator_verdict(case, placement)
    rules, tests = [], []
    for constraint in compile_policies(case.policies).items:
        try:
            rule, _, description = alert_rule(constraint)
        except NotExpressible:
            continue
        rules.append(rule)
        expected: list[dict[str, Any]] = []
        for labels in sorted({tuple(sorted(_labels(r).items())) for r in violations if r.policy == constraint.origin.policy}):
            # Anti-affinity and capacity alert per device; a replicas shortfall per model; a pin per pair.
            shown = dict(labels)
            text = description
            for key, value in shown.items():
                text = text.replace(f"{{{{ $labels.{key} }}}}", value)
            expected.append({"exp_labels": {**rule["labels"], **shown},
                             "exp_annotations": {**rule["annotations"], "description": text}})
        tests.append({"eval_time": "15m", "alertname": rule["alert"], "exp_alerts": expected})
    if not rules:
        return
    directory = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example: tmp_path is per test
    (directory / "rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": rules}]}, sort_keys=False))
    (directory / "test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series(case, placement), "alert_rule_test": tests}]},
        sort_keys=False, width=400))
    result = subprocess.run(["promtool", "test", "rules", "test.yaml"], capture_output=True, text=True, timeout=60,
                            cwd=directory)
    assert result.returncode == 0, result.stdout + result.stderr
