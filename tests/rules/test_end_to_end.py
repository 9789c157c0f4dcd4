"""Acceptance: real Triton servers, the real exporter, and the rules engine judging their peaks.

A CPU-only Triton stands in for a GPU: its device is ``cpu:<server>`` with a 400 MiB memory budget.
"large" (160 MiB + ~40 MiB of Python stub) and "medium" (96 MiB + stub) together, with the server
baseline, exceed 80% of it; "medium" alone does not. While "large" unloads, its stub's memory is
briefly the server's own, so the server-baseline peak holds it until it ages out of the (short) window.
"""

from __future__ import annotations

import pytest
import requests

from gpupack.app.cli import main
from gpupack.rules.evaluator import Evaluation
from gpupack.rules.loop import PolicyFile, RulesEngine
from gpupack.rules.peaks_source import ExporterSource
from gpupack.rules.transitions import ViolationTracker

from tests.exporter.conftest import exporter_factory, server_config  # noqa: F401 - fixture
from tests.rules.conftest import serving, wait_for, write_policies

pytestmark = pytest.mark.triton

MIB = 2**20
INTERVAL_SECONDS = 2.0
PEAK_WINDOW_SECONDS = 6.0
POLICY = "policies:\n  - name: gpu-memory-80\n    resource: gpu_memory\n    max: {max}\n    severity: critical\n"
VIOLATION = 'gpupack_policy_violation{device="cpu:t0",model="",policy="gpu-memory-80",severity="critical"} 1.0'


class RecordingTracker(ViolationTracker):
    """The engine's tracker, keeping every evaluation the engine published, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.evaluations: list[Evaluation] = []

    def update(self, evaluation: Evaluation) -> None:
        self.evaluations.append(evaluation)
        super().update(evaluation)


def test_device_over_80_percent_is_violated_from_the_first_evaluation_and_resolves_after_unload_or_relaxing(
        start_triton, exporter_factory, tmp_path, capsys):  # noqa: F811 - fixture
    server = start_triton(name="t0", models=["large", "medium"])
    exporter = exporter_factory([server_config(server, memory_budget_bytes=400 * MIB)],
                                window_seconds=PEAK_WINDOW_SECONDS)
    policies = write_policies(tmp_path, POLICY.format(max="80%"))

    assert main(["rules", "evaluate", "--once", "--policies", str(policies), "--exporter-url", exporter.url]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("gpu-memory-80"))
    assert row.split()[2] == "cpu:t0" and row.split()[-1] == "violated"

    tracker = RecordingTracker()
    engine = RulesEngine(ExporterSource(exporter.url), PolicyFile(policies).current, tracker=tracker)
    with serving(engine, INTERVAL_SECONDS) as metrics:
        wait_for(metrics, VIOLATION, timeout_seconds=15)
        assert [(r.policy, r.device) for r in tracker.evaluations[0].violations] == [("gpu-memory-80", "cpu:t0")]
        body = requests.get(metrics, timeout=2).text
        assert 'gpupack_policy_headroom_ratio{device="cpu:t0",policy="gpu-memory-80"} -' in body

        server.unload_model("large")
        body = wait_for(metrics, "gpupack_policy_violation{", present=False,
                        timeout_seconds=PEAK_WINDOW_SECONDS + 3 * INTERVAL_SECONDS + 5)
        headroom = next(line for line in body.splitlines() if line.startswith("gpupack_policy_headroom_ratio{"))
        assert float(headroom.split()[-1]) > 0

        server.load_model("large")
        wait_for(metrics, VIOLATION, timeout_seconds=15)
        policies.write_text(POLICY.format(max="1GiB"))
        wait_for(metrics, "gpupack_policy_violation{", present=False, timeout_seconds=15)
