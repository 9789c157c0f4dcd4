"""The long-running engine: evaluations on a schedule, /metrics over HTTP, reloads, failed fetches."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests

from gpupack.errors import InputError
from gpupack.rules.loop import PolicyFile, RulesEngine
from gpupack.rules.peaks_source import ExporterSource
from gpupack.rules.policy import PolicySet
from gpupack.timing import wait_until
from gpupack.triton.launcher import free_port

from tests.rules.conftest import serving, wait_for, write_policies

POLICY_TEXT = "policies:\n  - name: gpu-memory-80\n    resource: gpu_memory\n    max: 80%\n"
VIOLATION = 'gpupack_policy_violation{device="GPU-4",model="",policy="gpu-memory-80",severity="warning"} 1.0'


class CountedPolicies:
    """``PolicyFile.current``, counted as the engine calls it: once per evaluation, before it evaluates."""

    def __init__(self, policy_file: PolicyFile) -> None:
        self.policy_file, self.calls = policy_file, 0

    def __call__(self) -> PolicySet:
        policies = self.policy_file.current()
        self.calls += 1
        return policies

    def wait_for_a_published_evaluation(self) -> None:
        """Until an evaluation that read the policies after this call has published its result. One
        may be under way, having read them before; the read after the next one proves it published."""
        target = self.calls + 2
        wait_until(lambda: self.calls >= target, 5, "an evaluation reading the policies anew", interval_seconds=0.02)


def test_violation_appears_on_metrics_and_a_failed_fetch_makes_it_unknown(fake_exporter, tmp_path):
    engine = RulesEngine(ExporterSource(fake_exporter.url), PolicyFile(write_policies(tmp_path, POLICY_TEXT)).current)
    with serving(engine, 0.2) as metrics:
        wait_for(metrics, VIOLATION)
        fake_exporter.status = 500
        body = wait_for(metrics, "gpupack_rules_source_up 0.0")
        assert "gpupack_policy_violation{" not in body
        assert "gpupack_rules_evaluation_errors_total 0.0" not in body
        fake_exporter.status = 200
        wait_for(metrics, VIOLATION)


def test_relaxed_policy_file_is_reloaded_and_a_broken_edit_keeps_the_last_good_one(fake_exporter, tmp_path, caplog):
    path = write_policies(tmp_path, POLICY_TEXT)
    policy_file = PolicyFile(path)
    policies = CountedPolicies(policy_file)
    engine = RulesEngine(ExporterSource(fake_exporter.url), policies)
    with serving(engine, 0.2) as metrics:
        wait_for(metrics, VIOLATION)
        path.write_text(POLICY_TEXT.replace("80%", "95%"))
        wait_for(metrics, "gpupack_policy_violation{", present=False)
        path.write_text(POLICY_TEXT.replace("80%", "120%"))
        policies.wait_for_a_published_evaluation()
        assert policy_file.current().policies[0].max_ratio == 0.95
        assert "gpupack_policy_violation{" not in requests.get(metrics, timeout=2).text
    assert "keeping the previous policies" in caplog.text


def test_first_evaluation_runs_at_once_not_after_one_interval(fake_exporter, tmp_path):
    engine = RulesEngine(ExporterSource(fake_exporter.url), PolicyFile(write_policies(tmp_path, POLICY_TEXT)).current)
    with serving(engine, 60.0) as metrics:
        wait_for(metrics, VIOLATION, timeout_seconds=3.0)


def test_missing_policy_path_fails_before_anything_starts(tmp_path):
    with pytest.raises(InputError) as error:
        PolicyFile(Path(tmp_path / "nope.yaml"))
    assert str(error.value) == f"{tmp_path / 'nope.yaml'}: file not found"


def test_stop_ends_serving_within_the_grace_even_while_an_evaluation_hangs(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("gpupack.rules.loop.STOP_GRACE_SECONDS", 0.3)
    fetching, never = threading.Event(), threading.Event()

    def hung_fetch():
        fetching.set()
        never.wait()

    engine = RulesEngine(hung_fetch, PolicyFile(write_policies(tmp_path, POLICY_TEXT)).current)
    thread = threading.Thread(target=engine.serve, args=(1.0, "127.0.0.1", free_port()))
    thread.start()
    assert fetching.wait(5)
    engine.stop()
    thread.join(timeout=3)
    never.set()
    assert not thread.is_alive()
    assert "stopping with an evaluation still running after 0.3s" in caplog.text


def test_an_evaluation_that_raises_is_logged_and_the_next_one_still_runs(tmp_path, caplog):
    calls = 0

    def broken_fetch():
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug in a source")

    engine = RulesEngine(broken_fetch, PolicyFile(write_policies(tmp_path, POLICY_TEXT)).current)
    with serving(engine, 0.05):
        wait_until(lambda: calls >= 3, 5, "three evaluations", interval_seconds=0.02)
    assert "evaluation failed; the next one runs on schedule" in caplog.text and "a bug in a source" in caplog.text


def test_a_broken_edit_is_counted_and_read_even_while_the_exporter_fails(fake_exporter, tmp_path):
    path = write_policies(tmp_path, POLICY_TEXT)
    engine = RulesEngine(ExporterSource(fake_exporter.url), PolicyFile(path).current)
    with serving(engine, 0.2) as metrics:
        body = wait_for(metrics, VIOLATION)
        assert "gpupack_policy_load_errors_total 0.0" in body
        loaded_at = _sample(body, "gpupack_policy_last_load_timestamp_seconds")
        fake_exporter.status = 500
        wait_for(metrics, "gpupack_rules_source_up 0.0")
        path.write_text(POLICY_TEXT.replace("80%", "120%"))
        body = wait_for(metrics, "gpupack_policy_load_errors_total 1.0")
        assert _sample(body, "gpupack_policy_last_load_timestamp_seconds") == loaded_at
        path.write_text(POLICY_TEXT.replace("80%", "95%"))
        body = wait_for(metrics, "gpupack_policy_load_errors_total 1.0")
        wait_until(lambda: _sample(requests.get(metrics, timeout=2).text,
                                   "gpupack_policy_last_load_timestamp_seconds") > loaded_at,
                   5, "the good edit loaded while the exporter still fails", interval_seconds=0.05)


def _sample(body: str, name: str) -> float:
    (line,) = [line for line in body.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def test_a_second_engine_on_a_used_port_is_refused_in_one_line(fake_exporter, tmp_path):
    first = RulesEngine(ExporterSource(fake_exporter.url), PolicyFile(write_policies(tmp_path, POLICY_TEXT)).current)
    with serving(first, 0.2) as metrics:
        wait_for(metrics, VIOLATION)
        port = int(metrics.split(":")[2].split("/")[0])
        second = RulesEngine(ExporterSource(fake_exporter.url), PolicyFile(tmp_path / "policies.yaml").current)
        with pytest.raises(InputError) as refused:
            second.serve(0.2, "127.0.0.1", port)
    assert str(refused.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
