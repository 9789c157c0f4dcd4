"""One scheduler at a time across nodes: a Kubernetes ``coordination.k8s.io/v1`` Lease.

For replicas on different nodes that share no file. A holder that dies stops renewing; the Lease
expires and the next contender takes it over. Only what the lock needs of the API server is here:
GET, POST and PUT of one Lease, with the pod's service account.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import requests

from gpupack.errors import GpupackError, InputError
from gpupack.scheduler.rebalance.locks import LockHeldError, LockLostError, StateError

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class KubernetesApi:
    """Where the API server is and who we are to it: the pod's service account in a cluster."""

    base_url: str
    token_file: Path
    ca_file: Path
    timeout_seconds: float = 5.0

    @classmethod
    def in_cluster(cls, environ: Mapping[str, str], secrets_dir: Path = SERVICE_ACCOUNT_DIR) -> "KubernetesApi":
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise InputError("lock lease:NAME: KUBERNETES_SERVICE_HOST/PORT are not set (not running in a pod?)")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", secrets_dir / "token", secrets_dir / "ca.crt")

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> requests.Response:
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()  # re-read: projected tokens rotate
        except OSError as e:
            raise StateError(f"cannot read the service account token {self.token_file}: {e.strerror}") from e
        try:
            return requests.request(method, f"{self.base_url}{path}", json=body, timeout=self.timeout_seconds,
                                    headers={"Authorization": f"Bearer {token}"}, verify=str(self.ca_file))
        except requests.RequestException as e:
            raise StateError(f"Kubernetes API {method} {path}: {e}") from e


def _micro_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseLock:
    """The Lease ``name`` held for the life of a ``with`` block, renewed in the background.

    Every write carries the ``resourceVersion`` last read, so of two contenders that both saw the
    Lease free, the API server accepts one and answers the other 409 Conflict: the loser backs off.
    A holder that dies stops renewing, and the Lease is free once ``renewTime`` plus
    ``leaseDurationSeconds`` has passed. Release is a courtesy; expiry is the guarantee.
    """

    def __init__(self, name: str, namespace: str, identity: str, api: KubernetesApi,
                 lease_duration_seconds: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.name, self.namespace, self.identity, self.api = name, namespace, identity, api
        self.lease_duration_seconds = max(1, math.ceil(lease_duration_seconds))
        self._clock = clock
        self._lease: dict[str, Any] | None = None  # as the API server last returned it to us
        self._write = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lost = threading.Event()
        self._renewed_monotonic = 0.0  # when the API server last accepted our write

    @property
    def _collection(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    @property
    def _where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def acquire(self) -> None:
        now = self._clock()
        response = self.api.request("GET", f"{self._collection}/{self.name}")
        if response.status_code == 404:
            spec: dict[str, Any] = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_duration_seconds,
                    "acquireTime": _micro_time(now), "renewTime": _micro_time(now), "leaseTransitions": 0}
            document = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
            self._lease = self._send("POST", self._collection, document)
        else:
            lease = self._answer(response, "GET")
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            if holder and holder != self.identity and not self._expired(spec, now):
                raise LockHeldError(f"another scheduler holds {self._where} ({holder}, renewed {spec.get('renewTime')})")
            taken = copy.deepcopy(lease)
            taken["spec"] = {**spec, "holderIdentity": self.identity, "leaseDurationSeconds": self.lease_duration_seconds,
                             "renewTime": _micro_time(now)}
            if holder != self.identity:
                taken["spec"]["acquireTime"] = _micro_time(now)
                taken["spec"]["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            self._lease = self._send("PUT", f"{self._collection}/{self.name}", taken)
        self._stop.clear()
        self._lost.clear()
        self._renewed_monotonic = time.monotonic()
        self._renewer = threading.Thread(target=self._renew_until_released, name=f"lease-{self.name}", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        if self._renewer is None:
            return
        self._stop.set()
        self._renewer.join()
        self._renewer = None
        with self._write:
            if self._lease is None:
                return  # lost while renewing: nothing of ours to give back
            released = copy.deepcopy(self._lease)
            released["spec"] = {**released.get("spec", {}), "holderIdentity": None, "renewTime": _micro_time(self._clock())}
            try:
                self._send("PUT", f"{self._collection}/{self.name}", released)
            except GpupackError as e:
                log.warning("%s not released, it expires in %ds: %s", self._where, self.lease_duration_seconds, e)
            self._lease = None

    def _renew_until_released(self) -> None:
        # A third of the duration: two renewals may fail before anyone may take the Lease over.
        while not self._stop.wait(self.lease_duration_seconds / 3):
            with self._write:
                if self._lease is None:
                    return
                renewed = copy.deepcopy(self._lease)
                renewed["spec"] = {**renewed.get("spec", {}), "renewTime": _micro_time(self._clock())}
                try:
                    self._lease = self._send("PUT", f"{self._collection}/{self.name}", renewed)
                    self._renewed_monotonic = time.monotonic()
                except LockHeldError:
                    log.error("lost %s while acting: another scheduler took it over", self._where)
                    self._lease = None
                    self._lost.set()
                    return
                except GpupackError as e:
                    log.warning("could not renew %s, retrying: %s", self._where, e)

    def ensure_held(self) -> None:
        """Lost to another scheduler, or not renewed for a whole lease duration (so another may
        have taken it over): either way, stop acting."""
        if self._lost.is_set():
            raise LockLostError(f"lost {self._where}: another scheduler took it over")
        if time.monotonic() - self._renewed_monotonic > self.lease_duration_seconds:
            raise LockLostError(f"{self._where} not renewed for {self.lease_duration_seconds}s: it may have expired")

    def _expired(self, spec: Mapping[str, Any], now: float) -> bool:
        try:
            renewed = datetime.fromisoformat(str(spec["renewTime"])).timestamp()
        except (KeyError, ValueError):
            return False  # a holder we cannot judge keeps it: taking over a live holder is the worse error
        return renewed + float(spec.get("leaseDurationSeconds") or 0) < now

    def _send(self, method: str, path: str, document: Mapping[str, Any]) -> dict[str, Any]:
        response = self.api.request(method, path, document)
        if response.status_code == 409:
            raise LockHeldError(f"another scheduler wrote {self._where} first (conflict on {method})")
        return self._answer(response, method)

    def _answer(self, response: requests.Response, method: str) -> dict[str, Any]:
        if not response.ok:
            raise StateError(f"{self._where}: {method} answered {response.status_code}: {response.text[:200].strip()}")
        try:
            return dict(response.json())
        except ValueError as e:
            raise StateError(f"{self._where}: {method} did not answer JSON") from e

    def __enter__(self) -> "LeaseLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
