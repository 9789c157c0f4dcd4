"""The executor against real Triton servers: a model is never dropped, a failed step leaves the source."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import requests

from gpupack.domain import Placement
from gpupack.scheduler.rebalance.audit import AuditLog, read_audit
from gpupack.scheduler.rebalance.executor import ServerPerDeviceExecutor
from gpupack.scheduler.rebalance.step_mechanics import StepContext, StepFailedError
from gpupack.scheduler.rebalance.multi_gpu import GpuSlot, MultiGpuExecutor
from gpupack.scheduler.rebalance.steps import Step
from gpupack.router.haproxy_config import SERVER_HEADER
from gpupack.triton.control import TritonControl
from gpupack.servers import ServerConfig
from gpupack.timing import wait_until
from gpupack.testing import SampleModel, TritonServer, write_model_repository
from gpupack.testing.haproxy import haproxy_in_front

pytestmark = pytest.mark.triton
MIB = 2**20


def endpoint(server: TritonServer) -> ServerConfig:
    return ServerConfig(server.name, server.http_url)


def infer(server: TritonServer, model: str) -> bool:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}
    try:
        response = requests.post(f"{server.http_url}/v2/models/{model}/infer", json=body, timeout=10)
    except requests.RequestException:
        return False
    return response.status_code == 200 and response.json()["outputs"][0]["data"] == [2.0] * 16


class SteadyClient:
    """Sends one request after another to a model, from before the step until after it."""

    def __init__(self, server: TritonServer, model: str) -> None:
        self.server, self.model = server, model
        self.succeeded: list[float] = []  # wall-clock times of answered requests, as in the audit log
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if infer(self.server, self.model):
                self.succeeded.append(time.time())
            else:
                self.failed += 1

    def answered_between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.succeeded)

    def attempts(self) -> int:
        return len(self.succeeded) + self.failed

    def __enter__(self) -> "SteadyClient":
        self._thread.start()
        wait_until(lambda: self.succeeded, 10, f"{self.model} answering on {self.server.name}", interval_seconds=0.01)
        self.started = time.time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finished = time.time()
        # A few requests more after the step, so that one failing right after it is counted.
        after_step = self.attempts() + 3
        wait_until(lambda: self.attempts() >= after_step, 30, "three requests after the step", interval_seconds=0.01)
        self._stop.set()
        self._thread.join()


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit.jsonl")


def unloadable_repository(tmp_path: Path) -> Path:
    """A target whose copy of ``large`` refuses to load."""
    return write_model_repository(tmp_path / "bad-models", [SampleModel("large", 160 * MIB, fail_to_load=True)])


def test_model_is_ready_on_the_target_before_it_leaves_the_source(
    start_triton: Callable[..., TritonServer], audit: AuditLog
) -> None:
    a, b = start_triton(name="a", models=["large"]), start_triton(name="b")
    executor = ServerPerDeviceExecutor(
        {"cpu:a": endpoint(a), "cpu:b": endpoint(b)}, StepContext(audit, step_timeout_seconds=60, drain_seconds=1.0)
    )
    with SteadyClient(a, "large") as on_source:
        executor.execute(Step("large", "cpu:a", "cpu:b"))
    events = {e["event"]: e for e in read_audit(audit.path)}
    assert events["target_ready"]["source_serving"] is True
    assert events["target_ready"]["time_seconds"] + 1.0 <= events["source_unloaded"]["time_seconds"]
    # The source still answered after the target was ready: both copies served at once.
    assert on_source.answered_between(events["target_ready"]["time_seconds"], on_source.finished) > 0
    assert a.ready_models() == [] and b.ready_models() == ["large"]
    assert infer(b, "large")


def test_a_target_that_cannot_load_leaves_the_source_serving(
    start_triton: Callable[..., TritonServer], audit: AuditLog, tmp_path: Path
) -> None:
    a = start_triton(name="a", models=["large"])
    b = start_triton(name="b", repository=unloadable_repository(tmp_path))
    executor = ServerPerDeviceExecutor(
        {"cpu:a": endpoint(a), "cpu:b": endpoint(b)}, StepContext(audit, step_timeout_seconds=30, drain_seconds=0)
    )
    with SteadyClient(a, "large") as client, pytest.raises(StepFailedError, match="still serving on cpu:a"):
        executor.execute(Step("large", "cpu:a", "cpu:b"))
    assert client.failed == 0
    assert a.ready_models() == ["large"] and infer(a, "large")
    assert b.ready_models() == []
    failed = [e for e in read_audit(audit.path) if e["event"] == "step_failed"]
    assert failed and failed[0]["source_serving"] is True and "fail_to_load" in failed[0]["error"]


def slots(server: TritonServer) -> dict[str, GpuSlot]:
    # On CPU, two instance layouts of one server stand in for two GPUs: the reload mechanism is
    # the same one that moves instances between GPUs.
    return {
        "slot-1": GpuSlot(endpoint(server), {"kind": "KIND_CPU", "count": 1}),
        "slot-2": GpuSlot(endpoint(server), {"kind": "KIND_CPU", "count": 2}),
        "gpu-0": GpuSlot(endpoint(server), {"kind": "KIND_GPU", "gpus": [0]}),
    }


def test_reload_onto_new_instances_drops_no_request(start_triton: Callable[..., TritonServer], audit: AuditLog) -> None:
    server = start_triton(name="multi", models=["medium"])
    executor = MultiGpuExecutor(slots(server), Placement({"medium": ("slot-1",)}), StepContext(audit))
    with SteadyClient(server, "medium") as client:
        executor.execute(Step("medium", "slot-1", "slot-2"))
    assert client.failed == 0
    assert client.answered_between(client.started, client.finished) > 0
    groups = TritonControl(endpoint(server)).model_config("medium")["instance_group"]
    assert [(g["kind"], g["count"]) for g in groups] == [("KIND_CPU", 2)]
    assert executor.placement == Placement({"medium": ("slot-2",)})


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="needs a machine without GPUs")
def test_a_reload_that_fails_keeps_the_old_instances_serving(
    start_triton: Callable[..., TritonServer], audit: AuditLog
) -> None:
    server = start_triton(name="multi", models=["medium"])
    executor = MultiGpuExecutor(slots(server), Placement({"medium": ("slot-1",)}), StepContext(audit))
    with SteadyClient(server, "medium") as client, pytest.raises(StepFailedError, match="still serving on slot-1"):
        executor.execute(Step("medium", "slot-1", "gpu-0"))
    assert client.failed == 0
    assert executor.placement == Placement({"medium": ("slot-1",)})


class _NeverReady:
    """A server that accepts the load but never reports the model ready; ``a`` keeps serving it."""

    def __init__(self, endpoint: ServerConfig, calls: list[str]) -> None:
        self.endpoint, self.calls = endpoint, calls

    def load(self, model: str, config: object = None) -> None:
        self.calls.append(f"load {model} on {self.endpoint.name}")

    def unload(self, model: str) -> None:
        self.calls.append(f"unload {model} on {self.endpoint.name}")

    def is_ready(self, model: str) -> bool:
        return self.endpoint.name == "a"


def test_a_step_past_its_timeout_is_rolled_back(audit: AuditLog) -> None:
    now, calls = [0.0], []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    context = StepContext(
        audit,
        step_timeout_seconds=5,
        drain_seconds=0,
        control=lambda endpoint, timeout_seconds: _NeverReady(endpoint, calls),  # type: ignore[arg-type,return-value]
        sleep=sleep,
        clock=lambda: now[0],
    )
    servers = {"cpu:a": ServerConfig("a", "http://127.0.0.1:1"), "cpu:b": ServerConfig("b", "http://127.0.0.1:2")}
    with pytest.raises(StepFailedError, match="not ready within the step timeout; large still serving on cpu:a"):
        ServerPerDeviceExecutor(servers, context).execute(Step("large", "cpu:a", "cpu:b"))
    assert calls == ["load large on b", "unload large on b"]
    assert 5.0 <= now[0] < 6.0


def kill_9(server: TritonServer) -> None:
    """As an operator's game day does: no clean shutdown, the whole process group at once."""
    os.killpg(server.pid, signal.SIGKILL)
    assert server.process is not None
    server.process.wait(timeout=10)


def test_a_target_that_dies_during_the_drain_leaves_the_source_serving(
    start_triton: Callable[..., TritonServer], audit: AuditLog
) -> None:
    a, b = start_triton(name="a", models=["large"]), start_triton(name="b")

    def drain_while_the_target_dies(seconds: float) -> None:
        kill_9(b)
        time.sleep(seconds)

    context = StepContext(audit, step_timeout_seconds=30, drain_seconds=0.5, sleep=drain_while_the_target_dies)
    executor = ServerPerDeviceExecutor({"cpu:a": endpoint(a), "cpu:b": endpoint(b)}, context)
    with pytest.raises(StepFailedError, match="the target stopped serving before the source was unloaded") as failed:
        executor.execute(Step("large", "cpu:a", "cpu:b"))
    assert failed.value.result == "target_lost"
    assert "large still serving on cpu:a" in str(failed.value)
    assert a.ready_models() == ["large"] and infer(a, "large")
    events = [e["event"] for e in read_audit(audit.path)]
    assert events == ["step_started", "target_ready", "step_failed"]
    assert read_audit(audit.path)[-1]["reason"] == "target_lost"


def test_a_replica_is_not_dropped_while_no_other_copy_answers(
    start_triton: Callable[..., TritonServer], audit: AuditLog
) -> None:
    a, b = start_triton(name="a", models=["large"]), start_triton(name="b")
    executor = ServerPerDeviceExecutor({"cpu:a": endpoint(a), "cpu:b": endpoint(b)}, StepContext(audit))
    with pytest.raises(StepFailedError, match="no other copy of large answers now; it stays on cpu:a"):
        executor.execute(Step("large", "cpu:a", None))
    assert a.ready_models() == ["large"]


class RoutedClient(threading.Thread):
    """Sends one request after another through the router, noting who answered each and when."""

    def __init__(self, url: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url, self.model = url, model
        self.answered: list[tuple[float, str]] = []  # (wall-clock time, server)
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    response = session.post(f"{self.url}/v2/models/{self.model}/infer", json=body, timeout=10)
                except requests.RequestException as e:
                    self.failed.append(str(e))
                    continue
                if response.status_code == 200:
                    self.answered.append((time.time(), response.headers.get(SERVER_HEADER, "")))
                else:
                    self.failed.append(f"{response.status_code} {response.text[:80]}")


def test_a_routed_move_hands_clients_of_the_router_over_without_a_failed_request(
    start_triton: Callable[..., TritonServer], audit: AuditLog, tmp_path: Path
) -> None:
    a, b = start_triton(name="a", models=["large"]), start_triton(name="b")
    servers = [endpoint(a), endpoint(b)]
    with haproxy_in_front(servers, ["large"], {("large", "a")}, tmp_path / "haproxy") as proxy:
        context = StepContext(audit, step_timeout_seconds=60, router=proxy.router(),
                              copies={("large", "a"): None})
        clients = [RoutedClient(proxy.url, "large") for _ in range(3)]
        for client in clients:
            client.start()
        wait_until(lambda: all(c.answered for c in clients), 30, "clients answered through the router")
        ServerPerDeviceExecutor({"cpu:a": servers[0], "cpu:b": servers[1]}, context).execute(
            Step("large", "cpu:a", "cpu:b"))
        after = time.time()
        wait_until(lambda: all(any(t > after for t, _ in c.answered) for c in clients), 30, "answers after the move")
        for client in clients:
            client.stop.set()
            client.join()
    assert [f for c in clients for f in c.failed] == []
    events = {e["event"]: e["time_seconds"] for e in read_audit(audit.path)}
    answers = [(t, server) for c in clients for t, server in c.answered]
    # The target answered while the source was still loaded; only the target once it was unloaded.
    assert "b" in {server for t, server in answers if events["target_enabled"] <= t <= events["source_unloaded"]}
    assert {server for t, server in answers if t > events["source_unloaded"]} == {"b"}
    assert [e for e in events if e.startswith("source_")] == ["source_draining", "source_drained",
                                                              "source_disabled", "source_unloaded"]
    assert a.ready_models() == [] and b.ready_models() == ["large"]
