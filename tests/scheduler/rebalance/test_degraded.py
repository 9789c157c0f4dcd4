"""A fleet in trouble, fed at the Triton control boundary: a server that does not answer, a run cut
short, a server back empty, a policy no placement meets. Each keeps the rest of the fleet served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpupack.rules.loader import load_policies
from gpupack.scheduler.rebalance.audit import read_audit
from gpupack.scheduler.rebalance.desired import Copy, DesiredStateFile
from gpupack.scheduler.rebalance.inputs import FleetInputs, ProfileInputs
from gpupack.scheduler.rebalance.metrics import RebalanceState, make_wsgi_app
from gpupack.scheduler.rebalance.rebalancer import Rebalancer
from gpupack.scheduler.rebalance.settings import RebalanceSettings
from gpupack.servers import ServerConfig
from gpupack.triton.control import TritonControlError

from tests.conftest import CROWDING_PROFILE, REBALANCE_AT_80_PERCENT

MIB = 2**20


class FakeFleet:
    """What each server has loaded; a server in ``down`` refuses every call, as a killed one does."""

    def __init__(self, **loaded: list[str]) -> None:
        self.loaded = {server: set(models) for server, models in loaded.items()}
        self.down: set[str] = set()
        self.after_unload: list[str] = []  # servers whose index stops answering once a model is unloaded
        self.index_refused: set[str] = set()
        self.loads_refused: set[str] = set()  # servers whose loads fail, as a model that cannot load there

    def control(self, endpoint: ServerConfig, timeout_seconds: float = 0.0) -> "FakeControl":
        return FakeControl(endpoint, self)


class FakeControl:
    def __init__(self, endpoint: ServerConfig, fleet: FakeFleet) -> None:
        self.endpoint, self.fleet = endpoint, fleet

    def _models(self) -> set[str]:
        if self.endpoint.name in self.fleet.down:
            raise TritonControlError(f"{self.endpoint.name}: connection refused", "connection refused")
        return self.fleet.loaded[self.endpoint.name]

    def ready_models(self) -> dict[str, str]:
        if self.endpoint.name in self.fleet.index_refused:
            raise TritonControlError(f"{self.endpoint.name}: connection refused", "connection refused")
        return dict.fromkeys(sorted(self._models()), "1")

    def model_config(self, model: str) -> dict[str, Any]:
        self._models()
        return {"name": model}

    def load(self, model: str, config: object = None) -> None:
        if self.endpoint.name in self.fleet.loads_refused:
            raise TritonControlError(f"{self.endpoint.name}: failed to load '{model}'")
        self._models().add(model)

    def unload(self, model: str) -> None:
        self._models().discard(model)
        self.fleet.index_refused.update(self.fleet.after_unload)

    def is_ready(self, model: str) -> bool:
        return model in self._models()

    def probe(self, model: str) -> None:
        if model not in self._models():
            raise TritonControlError(f"{self.endpoint.name}: {model} is not ready")


def rebalancer(tmp_path: Path, fleet: FakeFleet, policies: str = REBALANCE_AT_80_PERCENT,
               state: RebalanceState | None = None) -> Rebalancer:
    (tmp_path / "profile.yaml").write_text(CROWDING_PROFILE)
    (tmp_path / "policies.yaml").write_text(policies)
    servers = [ServerConfig(name, f"http://{name}:8000") for name in sorted(fleet.loaded)]
    return Rebalancer(servers, ProfileInputs(str(tmp_path / "profile.yaml"), servers, 448 * MIB),
                      load_policies(tmp_path / "policies.yaml"),
                      RebalanceSettings(state_dir=tmp_path / "state", drain_seconds=0.0, cooldown_seconds=0.0),
                      state=state, control=fleet.control)


def events(tmp_path: Path) -> list[str]:
    return [e["event"] for e in read_audit(tmp_path / "state" / "audit.jsonl")]


def test_a_server_that_does_not_answer_is_marked_down_and_the_others_are_still_rebalanced(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a", "large-b"], b=[], c=[])
    fleet.down.add("b")
    balancer = rebalancer(tmp_path, fleet)
    plan = balancer.plan()
    assert dict(plan.fleet.down) == {"b": "connection refused"}
    (step,) = plan.admission.admitted
    assert step.target == "cpu:c"  # never onto the server that does not answer
    assert balancer.apply(plan).succeeded
    assert len(fleet.loaded["a"]) == len(fleet.loaded["c"]) == 1


def test_a_step_that_succeeded_stays_succeeded_when_the_fleet_stops_answering_after_it(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a", "large-b"], b=[])
    fleet.after_unload = ["a", "b"]
    balancer = rebalancer(tmp_path, fleet)
    outcome = balancer.apply(balancer.plan())
    assert outcome.succeeded and [s.succeeded for s in outcome.steps] == [True]
    assert events(tmp_path)[-2:] == ["step_succeeded", "run_finished"]
    assert read_audit(tmp_path / "state" / "audit.jsonl")[-1]["succeeded"] is True


def test_a_run_its_killed_engine_left_open_is_closed_by_the_next_one(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a", "large-b"], b=[])
    balancer = rebalancer(tmp_path, fleet)
    balancer.audit.record("run_started", steps=["move large-a cpu:a -> cpu:b"])
    balancer.audit.record("step_started", step="move large-a cpu:a -> cpu:b")
    balancer.apply(balancer.plan())
    log = read_audit(tmp_path / "state" / "audit.jsonl")
    assert [e["event"] for e in log[2:4]] == ["run_finished", "run_started"]
    assert log[2]["interrupted"] is True and log[2]["succeeded"] is False
    assert balancer.audit.unfinished_run() is None


def test_a_server_back_empty_gets_its_models_back_where_they_were(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a"], b=["large-b"])
    state = RebalanceState()
    balancer = rebalancer(tmp_path, fleet, state=state)
    balancer.restore()  # the desired state, from what the servers report
    fleet.loaded["b"] = set()  # restarted: explicit model control starts empty
    balancer.restore()
    assert fleet.loaded == {"a": {"large-a"}, "b": {"large-b"}}
    assert "model_reloaded" in events(tmp_path)
    metrics = b"".join(make_wsgi_app(state)({"PATH_INFO": "/metrics"}, lambda *_: None)).decode()
    assert 'gpupack_model_ready_copies{model="large-b"} 1.0' in metrics
    assert 'gpupack_model_desired_copies{model="large-b"} 1.0' in metrics


def test_a_model_whose_server_stays_down_is_reloaded_elsewhere_within_the_policies(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a"], b=["large-b"], c=[])
    balancer = rebalancer(tmp_path, fleet)
    balancer.restore()
    fleet.down.add("b")
    balancer.restore()
    # a holds large-a: both there would break the 80% policy, so c takes it.
    assert fleet.loaded["c"] == {"large-b"} and fleet.loaded["a"] == {"large-a"}
    desired = DesiredStateFile(tmp_path / "state").read()
    assert desired["large-b"] == (Copy("b", "cpu:b"), Copy("c", "cpu:c"))  # b's copy is still wanted when it returns


def test_a_model_with_nowhere_to_go_is_reported_lost_and_counted_at_zero_ready_copies(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a"], b=["large-b"])
    state = RebalanceState()
    balancer = rebalancer(tmp_path, fleet, state=state)
    balancer.restore()
    fleet.down.add("b")
    balancer.restore()
    balancer.restore()
    lost = [e for e in read_audit(tmp_path / "state" / "audit.jsonl") if e["event"] == "model_lost"]
    assert len(lost) == 1 and lost[0]["model"] == "large-b"  # once, not every cycle
    metrics = b"".join(make_wsgi_app(state)({"PATH_INFO": "/metrics"}, lambda *_: None)).decode()
    assert 'gpupack_model_ready_copies{model="large-b"} 0.0' in metrics


UNSATISFIABLE_PIN = """\
policies:
  - name: large-a-on-gpu-servers
    selector: {models: [large-a]}
    pin: {servers: [gpu-0]}
    action: rebalance
""" + REBALANCE_AT_80_PERCENT.removeprefix("policies:\n")


def test_an_unsatisfiable_policy_is_reported_while_the_other_policies_still_move_models(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a", "large-b"], b=[])
    balancer = rebalancer(tmp_path, fleet, UNSATISFIABLE_PIN)
    plan = balancer.plan()
    assert plan.unsatisfiable == ("large-a-on-gpu-servers",)
    outcome = balancer.apply(plan)
    assert len(fleet.loaded["a"]) == len(fleet.loaded["b"]) == 1  # the 80% policy holds again
    assert not outcome.succeeded  # the pin still is not met: the answer is no


def test_the_duplicate_a_killed_run_left_is_dropped_while_the_other_copy_answers(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a", "large-b"], b=["large-b"])
    balancer = rebalancer(tmp_path, fleet)
    plan = balancer.plan()
    assert [s.describe() for s in plan.admission.admitted] == ["unload large-b from cpu:a"]
    assert balancer.apply(plan).succeeded
    assert fleet.loaded == {"a": {"large-a"}, "b": {"large-b"}}


def test_refreshing_the_placement_does_not_fetch_the_peaks_the_evaluation_just_fetched(tmp_path: Path) -> None:
    fleet = FakeFleet(a=["large-a"], b=["large-b"])
    balancer = rebalancer(tmp_path, fleet)
    fetched = []
    profile = balancer.inputs

    def counted_inputs() -> FleetInputs:
        fetched.append(1)  # a stalled exporter makes each fetch a timeout: once a minute, not every cycle
        return profile()

    balancer.inputs = counted_inputs
    for _ in range(3):
        balancer.refresh_placement()
    assert len(fetched) == 1
    balancer.plan()  # a plan reads them anew
    assert len(fetched) == 2
