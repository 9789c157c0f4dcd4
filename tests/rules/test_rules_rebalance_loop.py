"""The closed loop: `gpupack rules run` with servers hands `rebalance` violations to the scheduler.

Two CPU-only Triton servers, each its own 448 MiB device ``cpu:<server>``. Measured by the
exporter, a 160 MiB sample model weighs ~200 MiB with its Python stub and a server ~36 MiB, so
both large models on one device (~440 MiB) break the 80% policy (358 MiB) and one alone does not.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gpupack.rules.evaluator import Result, Status
from gpupack.rules.loader import load_policies
from gpupack.closedloop.trigger import RebalanceTrigger
from gpupack.rules.transitions import RequestOutcome
from gpupack.scheduler.rebalance.inputs import ProfileInputs
from gpupack.scheduler.rebalance.locks import FileLock
from gpupack.scheduler.rebalance.rebalancer import Rebalancer
from gpupack.scheduler.rebalance.settings import RebalanceSettings
from gpupack.servers import ServerConfig
from gpupack.triton.launcher import free_port

from tests.conftest import REBALANCE_AT_80_PERCENT
from tests.exporter.conftest import crowded_pair, exporter_factory  # noqa: F401 - fixtures
from tests.rules.conftest import wait_for, write_policies

MIB = 2**20
PEAK_WINDOW_SECONDS = 6.0
SUCCEEDED = 'gpupack_rebalance_moves_total{result="succeeded"} 1.0'


class RulesProcess:
    """`gpupack rules run` as a user starts it; its log goes to a file (a pipe could fill up)."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.metrics = f"http://127.0.0.1:{self.port}/metrics"
        self.log_path = log_path
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gpupack", "rules", "run", "--interval", "1s",
                 "--listen", f"127.0.0.1:{self.port}", *args], stdout=log, stderr=subprocess.STDOUT)

    def events(self, name: str) -> list[dict]:
        found = []
        for line in self.log_path.read_text().splitlines():
            _, brace, record = line.partition("{")
            if brace and f'"event": "{name}"' in line:
                found.append(json.loads(brace + record))
        return found

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            tail = "\n".join(self.log_path.read_text().splitlines()[-20:])
            raise AssertionError(f"still running 15 s after SIGTERM; its log ends:\n{tail}") from None


@pytest.fixture
def rules_process(tmp_path: Path) -> Iterator[Callable[..., RulesProcess]]:
    started: list[RulesProcess] = []

    def start(*args: str) -> RulesProcess:
        started.append(RulesProcess(list(args), tmp_path / f"rules-{len(started)}.log"))
        return started[-1]

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


@pytest.mark.triton
def test_a_crowded_device_is_planned_in_dry_run_then_split_by_apply_and_stays_clean(
    crowded_pair, rules_process, tmp_path  # noqa: F811 - fixture
) -> None:
    t0, t1, exporter = crowded_pair(window_seconds=PEAK_WINDOW_SECONDS)
    common = ["--policies", str(write_policies(tmp_path, REBALANCE_AT_80_PERCENT)), "--exporter-url", exporter.url,
              "--server", f"t0={t0.http_url}", "--server", f"t1={t1.http_url}",
              "--state-dir", str(tmp_path / "state"), "--drain", "0.2s"]

    dry = rules_process(*common)
    wait_for(dry.metrics, 'gpupack_policy_violation{device="cpu:t0"', timeout_seconds=20)
    body = wait_for(dry.metrics, 'gpupack_model_placement{device="cpu:t0",model="large-b",server="t0",version="1"} 1.0')
    assert 'gpupack_rebalance_moves_total{result="succeeded"} 0.0' in body
    assert dry.stop() == 0
    (planned,) = dry.events("rebalance_planned")
    (step,) = planned["steps"]
    assert planned["dry_run"] and planned["requested_for"] == ["gpu-memory-80@cpu:t0"]
    assert (step["kind"], step["source"], step["target"]) == ("move", "cpu:t0", "cpu:t1")
    assert t0.ready_models() == ["large-a", "large-b"] and t1.ready_models() == []

    applying = rules_process(*common, "--apply")
    # The run's end is stamped last: by then its move is counted and placed.
    body = wait_for(applying.metrics, "gpupack_rebalance_last_success_timestamp_seconds ", timeout_seconds=30)
    (moved,) = t1.ready_models()
    assert sorted(t0.ready_models() + [moved]) == ["large-a", "large-b"]
    assert SUCCEEDED in body
    assert f'gpupack_model_placement{{device="cpu:t1",model="{moved}",server="t1",version="1"}} 1.0' in body
    assert f'model="{moved}",server="t0"' not in body
    placement = requests.get(applying.metrics.replace("/metrics", "/api/v1/placement"), timeout=5).json()
    assert {(m["server"], m["model"], m["device"]) for m in placement["models"]} == {
        ("t1", moved, "cpu:t1"), ("t0", ({"large-a", "large-b"} - {moved}).pop(), "cpu:t0")}

    # The source's peak of the moved model ages out of the window; then every evaluation is clean.
    body = wait_for(applying.metrics, "gpupack_policy_violation{", present=False,
                    timeout_seconds=PEAK_WINDOW_SECONDS + 10)
    assert 'gpupack_policy_headroom_ratio{device="cpu:t0",policy="gpu-memory-80"}' in body
    assert SUCCEEDED in body and 'gpupack_rebalance_moves_total{result="failed"} 0.0' in body
    names = [family.name for family in text_string_to_metric_families(body)]
    assert len(names) == len(set(names)), "a metric family appears twice on the shared port"
    assert applying.stop() == 0
    (applied,) = applying.events("rebalance_applied")
    assert applied["succeeded"] and not applied["dry_run"]


def _violation(device: str) -> Result:
    return Result("gpu-memory-80", device, "", Status.VIOLATED, 384.0 * MIB, 358.4 * MIB)


def _trigger(tmp_path: Path, server_urls: dict[str, str], apply: bool, models: tuple[str, ...] = ("large-a",),
             clock: Callable[[], float] = time.time) -> RebalanceTrigger:
    """Peaks from a profile: 64 MiB per server, 160 MiB per model, on 448 MiB devices; a 600 s cooldown."""
    (tmp_path / "profile.yaml").write_text("server_baseline: {peak_gpu_memory_bytes: 64MiB}\nmodels:\n" + "".join(
        f"  - {{model: {model}, peak_gpu_memory_bytes: 160MiB}}\n" for model in models))
    servers = [ServerConfig(name, url) for name, url in server_urls.items()]
    policies = load_policies(write_policies(tmp_path, REBALANCE_AT_80_PERCENT))
    rebalancer = Rebalancer(servers, ProfileInputs(str(tmp_path / "profile.yaml"), servers, 448 * MIB), policies,
                            RebalanceSettings(state_dir=tmp_path / "state", cooldown_seconds=600.0, drain_seconds=0.2),
                            clock=clock)
    return RebalanceTrigger(rebalancer, lambda: policies, apply=apply)


@pytest.mark.triton
def test_a_move_deferred_by_its_cooldown_asks_again_and_is_made_once_the_cooldown_ends(
    start_crowded_fleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    t0, t1 = start_crowded_fleet("t0", "t1")
    now = [1000.0]
    trigger = _trigger(tmp_path, {"t0": t0.http_url, "t1": t1.http_url}, apply=True, models=("large-a", "large-b"),
                       clock=lambda: now[0])
    for model in ("large-a", "large-b"):
        trigger.rebalancer.cooldowns.record_move(model)  # as if both had just moved here
    now[0] += 599.0
    with caplog.at_level(logging.WARNING):
        assert trigger((_violation("cpu:t0"),)) is RequestOutcome.RETRY
    assert t1.ready_models() == []
    (deferred,) = applied_records(caplog)[0]["deferred"]
    assert (deferred["kind"], deferred["source"], deferred["target"]) == ("move", "cpu:t0", "cpu:t1")
    assert deferred["reason"] == f"{deferred['model']} moved recently (cooldown 1s left)"

    now[0] += 1.0  # the cooldown ends
    with caplog.at_level(logging.WARNING):
        assert trigger((_violation("cpu:t0"),)) is RequestOutcome.SETTLED
    (step,) = applied_records(caplog)[1]["applied"]
    assert step["succeeded"] and (step["kind"], step["source"], step["target"]) == ("move", "cpu:t0", "cpu:t1")
    assert t1.ready_models() == [step["model"]] and len(t0.ready_models()) == 1


def applied_records(caplog: pytest.LogCaptureFixture) -> list[dict]:
    """The ``rebalance_applied`` lines the trigger logged, as JSON."""
    return [json.loads(r.getMessage()) for r in caplog.records if '"event": "rebalance_applied"' in r.getMessage()]


def test_while_another_scheduler_holds_the_lock_the_request_is_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trigger = _trigger(tmp_path, {"a": f"http://127.0.0.1:{free_port()}"}, apply=True)
    with caplog.at_level(logging.INFO), FileLock(tmp_path / "state" / "rebalance.lock"):
        assert trigger((_violation("cpu:a"),)) is RequestOutcome.RETRY
    (record,) = [json.loads(r.getMessage()) for r in caplog.records if "rebalance_" in r.getMessage()]
    assert record["event"] == "rebalance_skipped" and "another scheduler holds" in record["reason"]
    assert record["requested_for"] == ["gpu-memory-80@cpu:a"]


def test_a_server_that_does_not_answer_is_logged_and_the_loop_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trigger = _trigger(tmp_path, {"a": f"http://127.0.0.1:{free_port()}"}, apply=False)
    assert trigger((_violation("cpu:a"),)) is RequestOutcome.RETRY  # raises nothing; asks again later
    (record,) = [json.loads(r.getMessage()) for r in caplog.records if "rebalance_" in r.getMessage()]
    assert record["event"] == "rebalance_failed"
    assert record["error"].startswith("cannot reach Triton server a at http://127.0.0.1:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "prometheus"], "--prometheus-url is needed with --source prometheus"),
        (["--source", "profile", "--profile", "p.yaml", "--placement", "x.yaml"],
         "--source profile with servers needs --device-memory"),
        (["--lock", "flock:/tmp/x"], "--lock: 'flock:/tmp/x' is not file:PATH or lease:NAME"),
        (["--lock", "lease:gpupack-scheduler"], "needs POD_NAME and POD_NAMESPACE"),
        (["--max-moves", "0"], "--max-moves"),
        (["--server", "a=ftp://x"], "is not an http:// or https:// URL"),
    ],
)
def test_bad_rebalance_settings_exit_2_with_one_line_before_anything_starts(
    tmp_path: Path, args: list[str], message: str
) -> None:
    policies = write_policies(tmp_path, REBALANCE_AT_80_PERCENT)
    result = subprocess.run(
        [sys.executable, "-m", "gpupack", "rules", "run", "--policies", str(policies),
         "--server", "a=http://127.0.0.1:1", *args],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_servers_come_from_the_rules_section_of_the_config_file_with_line_numbers(tmp_path: Path) -> None:
    config = tmp_path / "gpupack.yaml"
    config.write_text(f"rules:\n  policies: {write_policies(tmp_path, REBALANCE_AT_80_PERCENT)}\n  servers:\n"
                      "    - {name: a, url: http://127.0.0.1:1}\n    - {name: b, url: 'nope'}\n")
    result = subprocess.run([sys.executable, "-m", "gpupack", "--config", str(config), "rules", "run"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{config}:5: rules.servers[1].url: 'nope' is not an http:// or https:// URL" in result.stderr
