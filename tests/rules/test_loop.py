"""The long-running engine: evaluations on a schedule, /metrics over HTTP, reloads, failed fetches."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from gpupack.errors import InputError
from gpupack.rules.loop import PolicyFile, RulesEngine
from gpupack.rules.peaks_source import ExporterSource
from gpupack.testing.tritonserver import free_port

from tests.rules.conftest import write_policies

POLICY_TEXT = "policies:\n  - name: gpu-memory-80\n    resource: gpu_memory\n    max: 80%\n"
VIOLATION = 'gpupack_policy_violation{device="GPU-4",model="",policy="gpu-memory-80",severity="warning"} 1.0'


@contextlib.contextmanager
def serving(engine: RulesEngine, interval_seconds: float) -> Iterator[str]:
    port = free_port()
    thread = threading.Thread(target=engine.serve, args=(interval_seconds, "127.0.0.1", port))
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        engine.stop()
        thread.join(timeout=10)
        assert not thread.is_alive()


def wait_for(url: str, text: str, present: bool = True, timeout_seconds: float = 5.0) -> str:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            body = requests.get(url, timeout=2).text
            if (text in body) == present:
                return body
        time.sleep(0.05)
    raise AssertionError(f"{text!r} {'never appeared' if present else 'never went away'} on {url}")


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


def test_relaxed_policy_file_is_reloaded_and_a_broken_edit_keeps_the_last_good_one(fake_exporter, tmp_path):
    path = write_policies(tmp_path, POLICY_TEXT)
    policy_file = PolicyFile(path)
    engine = RulesEngine(ExporterSource(fake_exporter.url), policy_file.current)
    with serving(engine, 0.2) as metrics:
        wait_for(metrics, VIOLATION)
        path.write_text(POLICY_TEXT.replace("80%", "95%"))
        wait_for(metrics, "gpupack_policy_violation{", present=False)
        path.write_text(POLICY_TEXT.replace("80%", "120%"))
        time.sleep(0.5)
        assert policy_file.current().policies[0].max_ratio == 0.95
        assert "gpupack_policy_violation{" not in requests.get(metrics, timeout=2).text


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
    calls = []

    def broken_fetch():
        calls.append(time.monotonic())
        raise RuntimeError("a bug in a source")

    engine = RulesEngine(broken_fetch, PolicyFile(write_policies(tmp_path, POLICY_TEXT)).current)
    with serving(engine, 0.05):
        deadline = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(calls) >= 3
    assert "evaluation failed; the next one runs on schedule" in caplog.text and "a bug in a source" in caplog.text
