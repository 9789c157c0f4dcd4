"""The Kubernetes Lease lock, against a small Lease API of our own (there is no cluster here).

The fake implements what the lock relies on: GET, POST (409 when it exists) and PUT (409 when
``metadata.resourceVersion`` is not the stored one), for ``coordination.k8s.io/v1`` Leases.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from gpupack.errors import InputError
from gpupack.scheduler.rebalance.lease import KubernetesApi, LeaseLock
from gpupack.scheduler.rebalance.locks import LockHeldError, LockLostError
from gpupack.scheduler.rebalance.settings import LockSpec, lock_factory
from gpupack.timing import wait_until

NAMESPACE = "gpupack"
LEASE = "gpupack-scheduler"
_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$")


class FakeLeaseApi:
    """Leases by (namespace, name); ``after_get`` runs once the next GET's answer is decided, before it is sent."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.tokens: list[str] = []
        self.after_get: Callable[[], None] | None = None
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                api.tokens.append(self.headers.get("Authorization", ""))
                match = _PATH.match(self.path)
                if match is None:
                    return self._reply(404, {"kind": "Status", "reason": "NotFound"})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                with api._lock:
                    status, answer = api.answer(method, match.group(1), match.group(2), body)
                if method == "GET" and api.after_get is not None:
                    # Before the reply leaves: the client cannot write before the other pod has.
                    hook, api.after_get = api.after_get, None
                    hook()
                self._reply(status, answer)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, method: str, namespace: str, name: str | None, body: Any) -> tuple[int, dict[str, Any]]:
        if method == "POST":
            key = (namespace, body["metadata"]["name"])
            if key in self.leases:
                return 409, {"kind": "Status", "reason": "AlreadyExists"}
            return 201, self._store(key, body, "1")
        key = (namespace, name or "")
        if key not in self.leases:
            return 404, {"kind": "Status", "reason": "NotFound"}
        stored = self.leases[key]
        if method == "GET":
            return 200, copy.deepcopy(stored)
        if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            return 409, {"kind": "Status", "reason": "Conflict"}
        return 200, self._store(key, body, str(int(stored["metadata"]["resourceVersion"]) + 1))

    def _store(self, key: tuple[str, str], body: dict[str, Any], version: str) -> dict[str, Any]:
        lease = copy.deepcopy(body)
        lease["metadata"]["resourceVersion"] = version
        self.leases[key] = lease
        return copy.deepcopy(lease)

    def write(self, holder: str | None) -> None:
        """Another pod's successful write, as if it happened between our read and our write."""
        key = (NAMESPACE, LEASE)
        lease = copy.deepcopy(self.leases.get(key) or {"metadata": {"name": LEASE, "namespace": NAMESPACE}, "spec": {}})
        lease["spec"] = {**lease["spec"], "holderIdentity": holder, "leaseDurationSeconds": 30,
                         "renewTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())}
        self._store(key, lease, str(int(lease["metadata"].get("resourceVersion", "0")) + 1))

    def holder(self) -> str | None:
        return self.leases[(NAMESPACE, LEASE)]["spec"].get("holderIdentity")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeLeaseApi]:
    server = FakeLeaseApi()
    yield server
    server.close()


@pytest.fixture
def api(fake: FakeLeaseApi, tmp_path: Path) -> KubernetesApi:
    (tmp_path / "token").write_text("pod-token\n")
    return KubernetesApi(fake.url, tmp_path / "token", tmp_path / "ca.crt")


def contender(api: KubernetesApi, identity: str, **kwargs: Any) -> LeaseLock:
    return LeaseLock(LEASE, NAMESPACE, identity, api, **kwargs)


def knows_it_lost(lock: LeaseLock) -> bool:
    """What the rebalancer asks before every step."""
    try:
        lock.ensure_held()
    except LockLostError:
        return True
    return False


def test_the_second_contender_is_refused_while_the_first_holds_the_lease_then_gets_it(
    api: KubernetesApi, fake: FakeLeaseApi
) -> None:
    with contender(api, "pod-a"):
        assert fake.holder() == "pod-a"
        with pytest.raises(LockHeldError, match="Lease gpupack/gpupack-scheduler .*pod-a"):
            contender(api, "pod-b").acquire()
    assert fake.holder() is None  # released on the way out
    with contender(api, "pod-b"):
        assert fake.holder() == "pod-b"
    spec = fake.leases[(NAMESPACE, LEASE)]["spec"]
    assert spec["leaseTransitions"] == 1
    assert set(fake.tokens) == {"Bearer pod-token"}


def test_the_holder_renews_while_it_acts(api: KubernetesApi, fake: FakeLeaseApi) -> None:
    with contender(api, "pod-a", lease_duration_seconds=1) as holder:
        first = fake.leases[(NAMESPACE, LEASE)]["spec"]["renewTime"]
        # Created as version 1; each renewal, every third of a second, writes the next.
        wait_until(lambda: int(fake.leases[(NAMESPACE, LEASE)]["metadata"]["resourceVersion"]) >= 3, 5,
                   "two renewals of the Lease", interval_seconds=0.05)
        assert fake.leases[(NAMESPACE, LEASE)]["spec"]["renewTime"] > first
        assert fake.holder() == "pod-a" and not knows_it_lost(holder)


def test_an_expired_lease_of_a_dead_holder_is_taken_over_and_the_old_holder_cannot_release_it(
    api: KubernetesApi, fake: FakeLeaseApi, caplog: pytest.LogCaptureFixture
) -> None:
    stalled = contender(api, "pod-a", lease_duration_seconds=3)  # renews every second
    stalled.acquire()
    with pytest.raises(LockHeldError):
        contender(api, "pod-b").acquire()  # still fresh
    later = contender(api, "pod-b", clock=lambda: time.time() + 60)  # pod-a's renewTime + 3 s is long past
    later.acquire()
    assert fake.holder() == "pod-b"
    # pod-a's next renewal, within a second, meets pod-b's newer resourceVersion: 409.
    wait_until(lambda: knows_it_lost(stalled), 5, "pod-a noticing it lost the Lease", interval_seconds=0.05)
    with pytest.raises(LockLostError, match="lost Lease gpupack/gpupack-scheduler: another scheduler took it over"):
        stalled.ensure_held()
    assert "lost Lease gpupack/gpupack-scheduler while acting" in caplog.text
    stalled.release()
    assert fake.holder() == "pod-b"
    later.release()
    assert fake.holder() is None


def test_a_contender_that_loses_the_race_to_update_backs_off(api: KubernetesApi, fake: FakeLeaseApi) -> None:
    with contender(api, "pod-a"):
        pass  # the Lease exists, free
    fake.after_get = lambda: fake.write("pod-c")  # pod-c writes between our GET and our PUT
    with pytest.raises(LockHeldError, match="conflict"):
        contender(api, "pod-b").acquire()
    assert fake.holder() == "pod-c"


def test_a_contender_that_loses_the_race_to_create_backs_off(api: KubernetesApi, fake: FakeLeaseApi) -> None:
    fake.after_get = lambda: fake.write("pod-c")  # our GET said 404; pod-c creates it first
    with pytest.raises(LockHeldError, match="conflict on POST"):
        contender(api, "pod-b").acquire()
    assert fake.holder() == "pod-c"


def test_the_deployment_lock_setting_names_the_lease_the_rbac_allows(tmp_path: Path) -> None:
    deploy = Path(__file__).parents[3] / "deploy" / "kubernetes"
    container = yaml.safe_load((deploy / "rules-deployment.yaml").read_text())["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    spec = LockSpec.parse(env["GPUPACK_REBALANCE_LOCK"]["value"])
    role = next(d for d in yaml.safe_load_all((deploy / "rbac.yaml").read_text()) if d["kind"] == "Role")
    allowed = {name for rule in role["rules"] for name in rule.get("resourceNames", [])}
    assert spec == LockSpec("lease", "gpupack-scheduler") and spec.target in allowed
    assert {"POD_NAME", "POD_NAMESPACE"} <= set(env)

    with pytest.raises(InputError, match="needs POD_NAME and POD_NAMESPACE"):
        lock_factory(spec, tmp_path, {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    with pytest.raises(InputError, match="KUBERNETES_SERVICE_HOST"):
        lock_factory(spec, tmp_path, {"POD_NAME": "p", "POD_NAMESPACE": NAMESPACE})
    lock = lock_factory(spec, tmp_path, {"POD_NAME": "rules-0", "POD_NAMESPACE": NAMESPACE,
                                         "KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})()
    assert isinstance(lock, LeaseLock) and lock.identity == "rules-0" and lock.namespace == NAMESPACE
    assert lock.api.base_url == "https://[fd00::1]:443"
    assert lock.api.token_file == Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


@pytest.mark.parametrize("text", ["lease:", "lease:Bad_Name", "file:", "flock:/tmp/x", "gpupack-scheduler"])
def test_a_lock_setting_that_is_neither_file_nor_lease_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not file:PATH or lease:NAME"):
        LockSpec.parse(text)


def test_gpupack_rebalance_takes_the_same_lock_setting(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpupack", "rebalance", "--server", "a=http://127.0.0.1:1", "--exporter",
         "http://127.0.0.1:1", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GPUPACK_REBALANCE_LOCK": "lease:gpupack-scheduler"})
    assert result.returncode == 2
    assert "lock lease:gpupack-scheduler needs POD_NAME and POD_NAMESPACE" in result.stderr


@pytest.mark.triton
def test_a_lease_lost_during_a_run_stops_the_rebalancer_before_its_next_step(
    api: KubernetesApi, fake: FakeLeaseApi, start_crowded_fleet: Callable[..., Any], tmp_path: Path
) -> None:
    from gpupack.rules.loader import load_policies
    from gpupack.scheduler.rebalance.audit import read_audit
    from gpupack.scheduler.rebalance.inputs import ProfileInputs
    from gpupack.scheduler.rebalance.rebalancer import Rebalancer
    from gpupack.scheduler.rebalance.settings import RebalanceSettings
    from gpupack.servers import ServerConfig

    from tests.conftest import CROWDING_PROFILE, REBALANCE_AT_80_PERCENT

    a, b = start_crowded_fleet("a", "b")
    (tmp_path / "profile.yaml").write_text(CROWDING_PROFILE)
    (tmp_path / "policies.yaml").write_text(REBALANCE_AT_80_PERCENT)
    servers = [ServerConfig("a", a.http_url), ServerConfig("b", b.http_url)]
    lock = contender(api, "pod-a", lease_duration_seconds=1)  # renews every third of a second

    def another_pod_takes_the_lease(line: str) -> None:
        if line.startswith("[1/"):  # announced, not yet run
            fake.write("pod-b")
            wait_until(lambda: knows_it_lost(lock), 10, "pod-a noticing it lost the Lease", interval_seconds=0.05)

    rebalancer = Rebalancer(
        servers, ProfileInputs(str(tmp_path / "profile.yaml"), servers, 448 * 2**20),
        load_policies(tmp_path / "policies.yaml"),
        RebalanceSettings(state_dir=tmp_path / "state", drain_seconds=0.2, lock=lambda: lock),
        progress=another_pod_takes_the_lease)
    outcome = rebalancer.request(["gpu-memory-80 on cpu:a"])
    assert outcome is not None and not outcome.succeeded and outcome.steps == ()
    assert "lost Lease gpupack/gpupack-scheduler" in outcome.stopped
    assert a.ready_models() == ["large-a", "large-b"] and b.ready_models() == []
    assert any(e["event"] == "lock_lost" for e in read_audit(tmp_path / "state" / "audit.jsonl"))
    assert fake.holder() == "pod-b"
