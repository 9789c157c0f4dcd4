"""What keeps a rebalancer from hurting a fleet: one scheduler at a time, few moves, no flapping.

- :class:`FileLock` — an exclusive ``flock`` on a file in the state directory. The kernel drops
  it when the holder dies, so a crashed scheduler never leaves a stale lock behind.
- :class:`LeaseLock` — a Kubernetes ``coordination.k8s.io/v1`` Lease, for replicas on different
  nodes that share no file. A holder that dies stops renewing; the Lease expires and the next
  contender takes it over. :func:`lock_factory` picks one from the ``lock`` setting.
- :class:`Cooldowns` — when each model last moved, persisted so the next run (another process,
  maybe hours later) still respects it.
- :func:`admit` — which planned steps this run may take: at most ``max_moves``, none for a model
  still cooling down, and, because skipping a step can change what is safe after it, each
  admitted step re-checked against the state the admitted ones before it leave.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import math
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import requests

from gpupack.config import Setting
from gpupack.domain import Placement
from gpupack.errors import GpupackError, InputError
from gpupack.scheduler.moves import check_order
from gpupack.scheduler.steps import Budget, Step

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LOCK_FILE_NAME = "rebalance.lock"


class LockHeldError(GpupackError):
    """Another scheduler is acting on the fleet."""


class StateError(GpupackError):
    """The state directory cannot be used."""


class LockLostError(GpupackError):
    """The lock was lost while acting: another scheduler may be moving models now."""


class FileLock:
    """Exclusive, non-blocking lock held for the life of a ``with`` block."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StateError(f"cannot open the lock file {self.path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockHeldError(f"another scheduler holds {self.path} ({holder})") from e
        # Who holds it, for the message the next contender prints.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.time():.0f}\n".encode(), 0)
        self._fd = fd

    def ensure_held(self) -> None:
        """A file lock held by an open descriptor cannot be taken away."""

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Lock(Protocol):
    """What the rebalancer holds while it acts, and asks before every step whether it still does."""

    def __enter__(self) -> "Lock": ...

    def __exit__(self, *exc_info: object) -> None: ...

    def ensure_held(self) -> None:
        """Raise :class:`LockLostError` once the lock can no longer be trusted to be ours."""


LockFactory = Callable[[], Lock]


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


@dataclass(frozen=True)
class LockSpec:
    """The ``lock`` setting: ``file:PATH`` or ``lease:NAME``."""

    kind: str
    target: str

    @classmethod
    def parse(cls, value: object) -> "LockSpec":
        kind, _, target = str(value).partition(":")
        if kind == "file" and target:
            return cls(kind, target)
        if kind == "lease" and re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", target):
            return cls(kind, target)
        raise ValueError(f"{value!r} is not file:PATH or lease:NAME (NAME a Kubernetes object name)")


LOCK_SETTING = Setting("lock", LockSpec.parse, None,
                       "one scheduler at a time: file:PATH (default: rebalance.lock in the state dir) or lease:NAME "
                       "(a Kubernetes Lease; needs POD_NAME, POD_NAMESPACE)", "SPEC")


def lock_factory(spec: LockSpec | None, state_dir: Path, environ: Mapping[str, str]) -> LockFactory:
    """A fresh lock per run; without a spec, the file lock in the state directory.

    A Lease is held by this pod (``POD_NAME``) in its namespace (``POD_NAMESPACE``), both from the
    downward API, and reached with the pod's service account.
    """
    if spec is None:
        return lambda: FileLock(state_dir / LOCK_FILE_NAME)
    if spec.kind == "file":
        return lambda: FileLock(Path(spec.target))
    identity, namespace = environ.get("POD_NAME"), environ.get("POD_NAMESPACE")
    if not identity or not namespace:
        raise InputError(f"lock lease:{spec.target} needs POD_NAME and POD_NAMESPACE (set them from the downward API)")
    api = KubernetesApi.in_cluster(environ)
    return lambda: LeaseLock(spec.target, namespace, identity, api)


class Cooldowns:
    """Per-model time of the last move, in a JSON file replaced atomically on every change."""

    def __init__(self, path: str | Path, cooldown_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise StateError(f"cannot read the cooldown file {self.path}: {e}") from e
        if not isinstance(data, dict):
            raise StateError(f"cannot read the cooldown file {self.path}: not a JSON object")
        return {str(model): float(moved_at) for model, moved_at in data.items()}

    def remaining_seconds(self) -> Mapping[str, float]:
        """Models still cooling down and for how long."""
        now = self._clock()
        remaining = {model: moved_at + self.cooldown_seconds - now for model, moved_at in self._load().items()}
        return {model: seconds for model, seconds in remaining.items() if seconds > 0}

    def record_move(self, model: str) -> None:
        data = self._load()
        data[model] = self._clock()
        temporary = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as e:
            raise StateError(f"cannot write the cooldown file {self.path}: {e.strerror}") from e


@dataclass(frozen=True)
class Admission:
    admitted: tuple[Step, ...]
    deferred: tuple[tuple[Step, str], ...]  # each step left for a later run, and why


def admit(
    current: Placement,
    steps: Sequence[Step],
    budget: Budget,
    max_moves: int | None,
    cooling_seconds: Mapping[str, float],
) -> Admission:
    """The steps this run may take, in plan order; the rest deferred with a reason."""
    admitted: list[Step] = []
    deferred: list[tuple[Step, str]] = []
    for step in steps:
        if max_moves is not None and len(admitted) >= max_moves:
            deferred.append((step, f"the limit of {max_moves} moves per run is reached"))
        elif step.model in cooling_seconds:
            deferred.append((step, f"{step.model} moved recently (cooldown {cooling_seconds[step.model]:.0f}s left)"))
        elif (problem := check_order(current, [*admitted, step], budget)) is not None:
            deferred.append((step, f"unsafe without a deferred step: {problem}"))
        else:
            admitted.append(step)
    return Admission(tuple(admitted), tuple(deferred))
