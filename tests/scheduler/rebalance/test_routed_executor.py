"""Moves that follow a routed order: the target is up in the router before the source drains, the
source holds nothing in the router before it is unloaded, and whatever fails, the source keeps
serving and stays in the router. Fed at the Triton control and router boundaries, which record
every change in one list, so the order is what is asserted; the last test runs the command
against real Triton servers behind a real HAProxy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import requests

from gpupack.errors import UnreachableError
from gpupack.model_configs import ConfigPoint, ModelConfig
from gpupack.router import DRAINING, OFF, SERVING, RouterError, RouteStatus
from gpupack.router.haproxy_config import SERVER_HEADER
from gpupack.rules.loader import load_policies
from gpupack.scheduler.rebalance.audit import AuditLog, read_audit
from gpupack.scheduler.rebalance.executor import ServerPerDeviceExecutor
from gpupack.scheduler.rebalance.step_mechanics import StepContext, StepFailedError
from gpupack.scheduler.rebalance.inputs import ProfileInputs
from gpupack.scheduler.rebalance.rebalancer import Rebalancer
from gpupack.scheduler.rebalance.settings import RebalanceSettings
from gpupack.scheduler.rebalance.steps import Step
from gpupack.scheduler.traffic import router_weights, traffic_shares
from gpupack.servers import ServerConfig
from gpupack.testing import TritonServer
from gpupack.testing.haproxy import haproxy_in_front
from gpupack.timing import wait_until
from gpupack.triton.control import TritonControlError

from tests.conftest import CROWDING_PROFILE, REBALANCE_AT_80_PERCENT

MIB = 2**20
CHANGES = ("load", "unload", "enable", "set_weight", "drain", "disable")


class Fleet:
    """Triton servers and one router, recording every change in ``calls`` in the order made."""

    def __init__(self, **loaded: list[str]) -> None:
        self.loaded = {server: set(models) for server, models in loaded.items()}
        self.calls: list[tuple[Any, ...]] = []
        self.router = FakeRouter(self)
        self.fail: set[str] = set()  # "load", "unload", "probe-after-drain": Triton refuses that

    def control(self, endpoint: ServerConfig, timeout_seconds: float = 0.0) -> "FakeTriton":
        return FakeTriton(endpoint.name, self)

    def changes(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] in CHANGES]


class FakeTriton:
    def __init__(self, name: str, fleet: Fleet) -> None:
        self.name, self.fleet = name, fleet
        self.endpoint = ServerConfig(name, f"http://{name}:8000")

    def ready_models(self) -> dict[str, str]:
        return dict.fromkeys(sorted(self.fleet.loaded[self.name]), "1")

    def model_config(self, model: str) -> dict[str, Any]:
        return {"name": model}

    def load(self, model: str, config: object = None) -> None:
        self.fleet.calls.append(("load", self.name, model))
        if "load" in self.fleet.fail:
            raise TritonControlError(f"{self.name}: load {model}: refused")
        self.fleet.loaded[self.name].add(model)

    def unload(self, model: str) -> None:
        entry = self.fleet.router.entries.get((model, self.name))
        self.fleet.calls.append(("unload", self.name, model, entry and entry.sessions, entry and entry.queued))
        if "unload" in self.fleet.fail:
            raise TritonControlError(f"{self.name}: unload {model}: refused")
        self.fleet.loaded[self.name].discard(model)

    def is_ready(self, model: str) -> bool:
        return model in self.fleet.loaded[self.name]

    def probe(self, model: str) -> None:
        drained = any(c[0] == "drain" for c in self.fleet.calls)
        if model not in self.fleet.loaded[self.name] or ("probe-after-drain" in self.fleet.fail and drained):
            raise TritonControlError(f"{self.name}: {model} does not answer")


class FakeRouter:
    """Entries start as HAProxy's configuration declares them; ``in_flight`` requests stay on a
    drained entry for that many status reads; ``fail`` names the change it refuses."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.entries: dict[tuple[str, str], RouteStatus] = {}
        self.fail: set[str] = set()  # a change it refuses, "up" (health check never passes), "answer"
        self.in_flight = 0
        self.never_drains = False

    def place(self, model: str, server: str, state: str = SERVING, weight: int = 256) -> None:
        self.entries[model, server] = RouteStatus(model, server, state, True, weight, 0, 0)

    def _change(self, name: str, model: str, server: str, *args: Any, **changed: Any) -> None:
        self.fleet.calls.append((name, model, server, *args))
        if name in self.fail:
            raise RouterError(f"{name} {model}/{server}: refused")
        if "answer" in self.fail:
            raise UnreachableError("the router", "/run/haproxy.sock", "connection refused")
        entry = self.entries.get((model, server)) or RouteStatus(model, server, OFF, True, 1, 0, 0)
        self.entries[model, server] = RouteStatus(**{**entry.__dict__, **changed})

    def status(self, model: str, server: str) -> RouteStatus:
        if "answer" in self.fail:
            raise UnreachableError("the router", "/run/haproxy.sock", "connection refused")
        entry = self.entries.get((model, server)) or RouteStatus(model, server, OFF, True, 1, 0, 0)
        if entry.state == SERVING and "up" in self.fail:
            entry = RouteStatus(**{**entry.__dict__, "up": False})
        if entry.state == DRAINING and not self.never_drains:
            # Each read finds one request fewer in flight, the last one queued until the end.
            self.in_flight = max(0, self.in_flight - 1)
            entry = RouteStatus(**{**entry.__dict__, "sessions": self.in_flight, "queued": min(1, self.in_flight)})
            self.entries[model, server] = entry
        elif entry.state == DRAINING:
            entry = RouteStatus(**{**entry.__dict__, "sessions": 3, "queued": 1})
        return entry

    def statuses(self, models: Iterable[str]) -> dict[tuple[str, str], RouteStatus]:
        return {(model, server): self.status(model, server) for model in models for server in sorted(self.fleet.loaded)}

    def enable(self, model: str, server: str, weight: int) -> None:
        self._change("enable", model, server, weight, state=SERVING, weight=weight)

    def set_weight(self, model: str, server: str, weight: int) -> None:
        self._change("set_weight", model, server, weight, weight=weight)

    def drain(self, model: str, server: str) -> None:
        self._change("drain", model, server, state=DRAINING, sessions=self.in_flight, queued=min(1, self.in_flight))

    def disable(self, model: str, server: str) -> None:
        self._change("disable", model, server, state=OFF)

    def describe(self) -> str:
        return "HAProxy at /run/haproxy.sock"


class Clock:
    """Time that passes only when the executor sleeps: a step timeout costs no wall time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


SERVERS = {"cpu:a": ServerConfig("a", "http://a:8000"), "cpu:b": ServerConfig("b", "http://b:8000"),
           "cpu:c": ServerConfig("c", "http://c:8000")}


def config(name: str, rate: float) -> ModelConfig:
    return ModelConfig(name=name, peak_gpu_memory_bytes=100 * MIB,
                       points=(ConfigPoint(throughput_per_second=rate, peaks={}, concurrency=1),))


def executor(fleet: Fleet, tmp_path: Path, copies: dict[tuple[str, str], float | None], router: bool = True,
             **context: Any) -> ServerPerDeviceExecutor:
    clock = Clock()
    return ServerPerDeviceExecutor(SERVERS, StepContext(
        AuditLog(tmp_path / "audit.jsonl"), step_timeout_seconds=5.0, drain_seconds=0.0, control=fleet.control,
        sleep=clock.sleep, clock=clock, router=fleet.router if router else None, copies=copies, **context))


def events(tmp_path: Path) -> list[str]:
    return [e["event"] for e in read_audit(tmp_path / "audit.jsonl")]


def moving_fleet() -> Fleet:
    """``ranker`` on a (leaving) and c (staying), b empty; the router has both copies serving."""
    fleet = Fleet(a=["ranker"], b=[], c=["ranker"])
    fleet.router.place("ranker", "a")
    fleet.router.place("ranker", "c")
    fleet.router.place("ranker", "b", OFF, 1)
    return fleet


def test_a_move_enables_the_target_then_drains_the_source_then_unloads_it(tmp_path: Path) -> None:
    fleet = moving_fleet()
    fleet.router.in_flight = 3
    run = executor(fleet, tmp_path, {("ranker", "a"): 10.0, ("ranker", "c"): 30.0})
    run.execute(Step("ranker", "cpu:a", "cpu:b"))
    assert fleet.changes() == [
        ("load", "b", "ranker"),
        ("enable", "ranker", "b", 85),  # the copy arriving serves what a's did: a third of c's
        ("set_weight", "ranker", "c", 256),
        ("drain", "ranker", "a"),
        ("disable", "ranker", "a"),
        ("unload", "a", "ranker", 0, 0),  # nothing in flight on a when it goes
    ]
    assert fleet.loaded == {"a": set(), "b": {"ranker"}, "c": {"ranker"}}
    assert events(tmp_path) == ["step_started", "target_ready", "target_enabled", "copies_reweighted",
                                "source_draining", "source_drained", "source_disabled", "source_unloaded",
                                "step_succeeded"]


def test_adding_a_copy_routes_it_in_and_removing_one_routes_it_out(tmp_path: Path) -> None:
    fleet = moving_fleet()
    run = executor(fleet, tmp_path, {("ranker", "a"): 10.0, ("ranker", "c"): 10.0})
    run.execute(Step("ranker", None, "cpu:b"))
    assert fleet.changes() == [("load", "b", "ranker"), ("enable", "ranker", "b", 256),
                               ("set_weight", "ranker", "a", 256), ("set_weight", "ranker", "c", 256)]
    fleet.calls.clear()
    run.execute(Step("ranker", "cpu:c", None))
    assert fleet.changes() == [("set_weight", "ranker", "a", 256), ("set_weight", "ranker", "b", 256),
                               ("drain", "ranker", "c"), ("disable", "ranker", "c"), ("unload", "c", "ranker", 0, 0)]
    assert fleet.router.entries["ranker", "c"].state == OFF and fleet.loaded["c"] == set()


def test_reconfiguring_in_place_leaves_routing_alone(tmp_path: Path) -> None:
    fleet = moving_fleet()
    run = executor(fleet, tmp_path, {}, configs={"ranker": {"fast": config("fast", 50.0)}})
    run.execute(Step("ranker", "cpu:a", "cpu:a", config="fast"))
    assert fleet.changes() == [("load", "a", "ranker")]


@pytest.mark.parametrize("failure", [
    "load", "enable", "up", "set_weight", "drain", "drained", "disable", "probe-after-drain", "unload", "answer",
])
def test_a_failure_at_any_phase_leaves_the_source_serving_and_in_the_router(tmp_path: Path, failure: str) -> None:
    fleet = moving_fleet()
    if failure in ("load", "unload", "probe-after-drain"):
        fleet.fail.add(failure)
    elif failure == "drained":
        fleet.router.never_drains = True
    elif failure == "answer":  # the router stops answering once the target is loaded
        fleet.control = lambda endpoint, timeout_seconds=0.0: _router_dies_on_load(fleet, endpoint)  # type: ignore
    else:
        fleet.router.fail.add(failure)
    run = executor(fleet, tmp_path, {("ranker", "a"): 10.0, ("ranker", "c"): 10.0})
    with pytest.raises(StepFailedError, match="still serving on cpu:a"):
        run.execute(Step("ranker", "cpu:a", "cpu:b"))
    fleet.router.fail.discard("answer")
    assert "ranker" in fleet.loaded["a"]
    assert fleet.router.entries["ranker", "a"].state == SERVING
    assert not any(c[:3] == ("drain", "ranker", "a") for c in fleet.calls) or \
        any(c[:3] == ("enable", "ranker", "a") for c in fleet.calls), "a drain is undone by serving again"
    assert "step_failed" in events(tmp_path)


def _router_dies_on_load(fleet: Fleet, endpoint: ServerConfig) -> FakeTriton:
    class Dying(FakeTriton):
        def load(self, model: str, config: object = None) -> None:
            super().load(model, config)
            fleet.router.fail.add("answer")

    return Dying(endpoint.name, fleet)


def test_a_target_that_took_requests_is_drained_before_it_is_rolled_back(tmp_path: Path) -> None:
    fleet = moving_fleet()
    fleet.router.fail.add("set_weight")
    run = executor(fleet, tmp_path, {("ranker", "a"): 10.0, ("ranker", "c"): 10.0})
    with pytest.raises(StepFailedError):
        run.execute(Step("ranker", "cpu:a", "cpu:b"))
    target = [c for c in fleet.changes() if c[1] == "b" or c[2] == "b"]
    assert [c[0] for c in target] == ["load", "enable", "drain", "disable", "unload"]
    assert fleet.loaded["b"] == set() and fleet.router.entries["ranker", "b"].state == OFF


def test_the_drain_waits_until_the_router_holds_no_session_and_nothing_queued(tmp_path: Path) -> None:
    fleet = moving_fleet()
    fleet.router.in_flight = 4
    run = executor(fleet, tmp_path, {})
    run.execute(Step("ranker", "cpu:a", "cpu:b"))
    unload = next(c for c in fleet.calls if c[0] == "unload")
    assert unload[3:] == (0, 0)
    drained = next(e for e in read_audit(tmp_path / "audit.jsonl") if e["event"] == "source_drained")
    assert drained["seconds"] > 0  # it waited: the requests in flight took several reads to finish


def test_a_drain_that_never_ends_times_out_within_the_step_timeout_and_serves_again(tmp_path: Path) -> None:
    fleet = moving_fleet()
    fleet.router.never_drains = True
    run = executor(fleet, tmp_path, {})
    with pytest.raises(StepFailedError, match="still has requests within the step timeout"):
        run.execute(Step("ranker", "cpu:a", "cpu:b"))
    assert run.context.clock() <= 5.0 + 0.1
    assert fleet.changes()[-1][:3] == ("enable", "ranker", "a")
    assert not any(c[0] == "unload" for c in fleet.calls)
    log = read_audit(tmp_path / "audit.jsonl")
    restored = next(e for e in log if e["event"] == "source_restored")
    assert restored["restored"] is True and restored["server"] == "a"


def test_weights_follow_what_each_copy_serves() -> None:
    assert router_weights({"a": 100.0, "b": 50.0}) == {"a": 256, "b": 128}
    assert router_weights({"a": None, "b": None, "c": None}) == {"a": 256, "b": 256, "c": 256}
    shares = traffic_shares({"a": 100.0, "b": 50.0, "c": None})  # c: as the average known copy
    assert shares == pytest.approx({"a": 100 / 225, "b": 50 / 225, "c": 75 / 225})
    assert router_weights({"a": 1000.0, "b": 1.0}) == {"a": 256, "b": 1}


def test_the_arriving_copy_is_weighted_by_its_configuration(tmp_path: Path) -> None:
    fleet = moving_fleet()
    run = executor(fleet, tmp_path, {("ranker", "a"): 20.0, ("ranker", "c"): 20.0},
                   configs={"ranker": {"fast": config("fast", 40.0)}})
    run.execute(Step("ranker", "cpu:a", "cpu:b", config="fast"))
    assert fleet.changes()[1:3] == [("enable", "ranker", "b", 256), ("set_weight", "ranker", "c", 128)]


def rebalancer(tmp_path: Path, fleet: Fleet, router: bool, progress: list[str]) -> Rebalancer:
    (tmp_path / "profile.yaml").write_text(CROWDING_PROFILE)
    (tmp_path / "policies.yaml").write_text(REBALANCE_AT_80_PERCENT)
    servers = [ServerConfig(name, f"http://{name}:8000") for name in sorted(fleet.loaded)]
    return Rebalancer(servers, ProfileInputs(str(tmp_path / "profile.yaml"), servers, 448 * MIB),
                      load_policies(tmp_path / "policies.yaml"),
                      RebalanceSettings(state_dir=tmp_path / "state", drain_seconds=0.0, cooldown_seconds=0.0,
                                        router=fleet.router if router else None),
                      control=fleet.control, progress=progress.append)


def test_without_a_router_the_run_says_clients_are_not_redirected(tmp_path: Path) -> None:
    fleet, progress = Fleet(a=["large-a", "large-b"], b=[]), []
    balancer = rebalancer(tmp_path, fleet, router=False, progress=progress)
    assert balancer.apply(balancer.plan()).succeeded
    assert [line for line in progress if "clients are not being redirected" in line] == [progress[0]]
    assert not any(c[0] in ("enable", "drain") for c in fleet.calls)


def test_applying_with_a_router_first_brings_it_in_line_with_the_placement(tmp_path: Path) -> None:
    fleet, progress = Fleet(a=["large-a", "large-b"], b=[]), []  # a restarted HAProxy: everything off
    balancer = rebalancer(tmp_path, fleet, router=True, progress=progress)
    assert balancer.apply(balancer.plan()).succeeded
    first = fleet.changes()[:2]
    assert sorted(first) == [("enable", "large-a", "a", 256), ("enable", "large-b", "a", 256)]
    assert not any("not being redirected" in line for line in progress)
    assert "clients follow each move through HAProxy at /run/haproxy.sock" in progress
    moved = next(c[2] for c in fleet.changes() if c[0] == "load")
    assert fleet.router.entries[moved, "b"].state == SERVING and fleet.router.entries[moved, "a"].state == OFF


def test_a_router_that_does_not_answer_stops_the_run_before_any_step(tmp_path: Path) -> None:
    fleet = Fleet(a=["large-a", "large-b"], b=[])
    fleet.router.fail.add("answer")
    balancer = rebalancer(tmp_path, fleet, router=True, progress=[])
    with pytest.raises(UnreachableError, match="cannot reach the router"):
        balancer.apply(balancer.plan())
    assert fleet.loaded == {"a": {"large-a", "large-b"}, "b": set()} and not fleet.changes()
    assert read_audit(tmp_path / "state" / "audit.jsonl")[-1]["event"] == "run_finished"


def test_rebalance_apply_with_a_router_aligns_it_then_moves_clients_of_the_router(
    start_crowded_fleet: Callable[[str, str], tuple[TritonServer, TritonServer]], tmp_path: Path
) -> None:
    a, b = start_crowded_fleet("a", "b")
    (tmp_path / "profile.yaml").write_text(CROWDING_PROFILE)
    (tmp_path / "policies.yaml").write_text(REBALANCE_AT_80_PERCENT)
    servers = [ServerConfig("a", a.http_url), ServerConfig("b", b.http_url)]
    # A router that restarted from a configuration written before anything was placed: all off.
    with haproxy_in_front(servers, ["large-a", "large-b"], set(), tmp_path / "haproxy") as proxy:
        applied = subprocess.run(
            [sys.executable, "-m", "gpupack", "rebalance", "--server", f"a={a.http_url}", "--server",
             f"b={b.http_url}", "--profile", str(tmp_path / "profile.yaml"), "--device-memory", "448MiB",
             "--policies", str(tmp_path / "policies.yaml"), "--state-dir", str(tmp_path / "state"),
             "--router", f"haproxy:{proxy.admin_socket}", "--apply"],
            capture_output=True, text=True, timeout=240)
        assert applied.returncode == 0, applied.stderr
        assert f"clients follow each move through HAProxy at {proxy.admin_socket}" in applied.stderr
        assert "not being redirected" not in applied.stderr
        placed = {model: server.name for server in (a, b) for model in server.ready_models()}
        assert set(placed.values()) == {"a", "b"}
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}

        def answered_by(model: str) -> str | None:
            response = requests.post(f"{proxy.url}/v2/models/{model}/infer", json=body, timeout=10)
            return response.headers.get(SERVER_HEADER) if response.status_code == 200 else None

        for model, server in placed.items():
            wait_until(lambda: answered_by(model) == server, 30, f"{model} served by {server} through the router")


def test_a_loop_that_acts_routes_a_copy_loaded_by_hand_at_its_next_refresh(tmp_path: Path) -> None:
    fleet = Fleet(a=["large-a"], b=[])
    balancer = rebalancer(tmp_path, fleet, router=True, progress=[])
    balancer.restore_under = lambda: balancer.policies  # as the rules engine with --apply sets it
    balancer.refresh_placement()
    assert fleet.router.entries["large-a", "a"].state == SERVING
    fleet.loaded["b"].add("large-b")  # an operator loads a model on b, outside gpupack
    balancer.refresh_placement()
    assert fleet.router.entries["large-b", "b"].state == SERVING
    assert fleet.router.status("large-a", "b").state == OFF
