"""What a Triton server says about itself: loaded models, their configs, statistics, /metrics.

The :class:`TritonClient` protocol is the boundary (tests and the benchmark feed fakes of it);
:class:`TritonSource` turns its answers into a frozen :class:`TritonReading`. Model configs are
read once per load, not per poll: they only change when a model is (re)loaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import requests
from prometheus_client.parser import text_string_to_metric_families

from gpupack.addresses import http_client_address
from gpupack.devices import InstanceGroup, instance_groups
from gpupack.measurement import SourceError
from gpupack.servers import ServerConfig

_NS_PER_SECOND = 1e9


class TritonClient(Protocol):
    def repository_index(self) -> list[dict]: ...
    def model_config(self, model: str, version: str) -> dict: ...
    def statistics(self) -> list[dict]: ...
    def metrics_text(self) -> str | None: ...


@dataclass(frozen=True)
class MemoryUsage:
    """One entry of Triton's per-model ``memory_usage`` statistic (backends that report it)."""

    kind: str  # GPU, CPU, CPU_PINNED
    device_id: int
    size_bytes: int


@dataclass(frozen=True)
class ModelReading:
    model: str
    version: str
    instance_groups: tuple[InstanceGroup, ...] = ()
    compute_seconds: float = 0.0  # cumulative compute_input + compute_infer + compute_output
    inference_count: int = 0
    memory_usage: tuple[MemoryUsage, ...] = ()
    gpu_uuids: tuple[str, ...] = ()  # from /metrics series of this model that carry gpu_uuid


@dataclass(frozen=True)
class TritonReading:
    server: str
    taken_at_seconds: float
    models: tuple[ModelReading, ...]
    gpu_uuids: tuple[str, ...] = ()  # every GPU the server's /metrics mentions


class TritonSource:
    def __init__(
        self,
        server: ServerConfig,
        client_factory: Callable[[ServerConfig], TritonClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self._client_factory = client_factory or make_client
        self._client: TritonClient | None = None
        self._clock = clock
        self._configs: dict[tuple[str, str], tuple[InstanceGroup, ...]] = {}
        # model -> (its raw statistics, GPUs, instance groups) last read, and the reading made of them
        self._readings: dict[tuple[str, str], tuple[dict, tuple[str, ...], tuple[InstanceGroup, ...], ModelReading]] = {}

    def read(self) -> TritonReading:
        try:
            if self._client is None:
                self._client = self._client_factory(self.server)
            return self._read(self._client)
        except SourceError:
            self._client = None
            raise
        except Exception as e:  # noqa: BLE001 - the client library's errors are many and untyped
            self._client = None
            raise SourceError(f"server {self.server.name}: {type(e).__name__}: {e}".splitlines()[0]) from e

    def _read(self, client: TritonClient) -> TritonReading:
        taken_at = self._clock()
        ready = [(str(m["name"]), str(m.get("version", ""))) for m in client.repository_index()
                 if m.get("state") == "READY"]
        ready_keys = set(ready)  # thousands of models: membership in a list made every poll quadratic
        self._configs = {key: groups for key, groups in self._configs.items() if key in ready_keys}
        for key in ready:
            if key not in self._configs:
                self._configs[key] = instance_groups(client.model_config(*key))
        stats = {(str(s["name"]), str(s["version"])): s for s in client.statistics()}
        text = client.metrics_text()
        per_model, all_gpus = _gpu_uuids(text) if text else ({}, ())
        before, self._readings = self._readings, {}
        for key in ready:
            model_stats, uuids, groups = stats.get(key, {}), per_model.get(key, ()), self._configs[key]
            known = before.get(key)
            # Most of a large fleet is idle between two polls: its statistics compare equal (in C)
            # and its reading is handed on, not rebuilt -- less work, and less for the GC to chase.
            if known is None or known[0] != model_stats or known[1] != uuids or known[2] is not groups:
                known = (model_stats, uuids, groups, _model_reading(*key, groups, model_stats, uuids))
            self._readings[key] = known
        models = tuple(self._readings[key][3] for key in ready)
        return TritonReading(self.server.name, taken_at, models, all_gpus)


def _model_reading(name: str, version: str, groups: tuple[InstanceGroup, ...], stats: dict,
                   gpu_uuids: tuple[str, ...]) -> ModelReading:
    inference = stats.get("inference_stats", {})
    compute_ns = sum(int(inference.get(part, {}).get("ns", 0)) for part in ("compute_input", "compute_infer", "compute_output"))
    usage = tuple(
        MemoryUsage(str(u.get("type", "")), int(u.get("id", 0)), int(u.get("byte_size", 0)))
        for u in stats.get("memory_usage", ())
    )
    return ModelReading(
        model=name,
        version=version,
        instance_groups=groups,
        compute_seconds=compute_ns / _NS_PER_SECOND,
        inference_count=int(stats.get("inference_count", 0)),
        memory_usage=usage,
        gpu_uuids=gpu_uuids,
    )


def _gpu_uuids(text: str) -> tuple[dict[tuple[str, str], tuple[str, ...]], tuple[str, ...]]:
    """Which GPUs each model's series name, and all GPUs named. Only gpu_uuid lines are parsed."""
    lines = [line for line in text.splitlines() if "gpu_uuid=" in line and not line.startswith("#")]
    per_model: dict[tuple[str, str], set[str]] = {}
    every: set[str] = set()
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            uuid = sample.labels.get("gpu_uuid")
            if not uuid:
                continue
            every.add(uuid)
            if "model" in sample.labels:
                key = (sample.labels["model"], sample.labels.get("version", ""))
                per_model.setdefault(key, set()).add(uuid)
    return {k: tuple(sorted(v)) for k, v in per_model.items()}, tuple(sorted(every))


def make_client(server: ServerConfig) -> TritonClient:
    return GrpcTritonClient(server) if server.protocol == "grpc" else HttpTritonClient(server)


def _fetch_metrics(server: ServerConfig, session: requests.Session) -> str | None:
    """``session`` keeps the connection between polls: a new one each second cost more than the read."""
    if not server.metrics_url:
        return None
    tls = server.tls
    verify: Any = True
    cert: Any = None
    if tls:
        verify = False if tls.insecure else (tls.ca_file or True)
        cert = (tls.cert_file, tls.key_file) if tls.cert_file and tls.key_file else tls.cert_file
    response = session.get(server.metrics_url, headers=dict(server.headers), timeout=server.timeout_seconds,
                            verify=verify, cert=cert)
    response.raise_for_status()
    return response.text


class HttpTritonClient:
    def __init__(self, server: ServerConfig) -> None:
        import tritonclient.http as httpclient  # noqa: PLC0415 - heavy import, only when used

        address, https = http_client_address(server.url)
        ssl_options: dict[str, Any] = {}
        if server.tls and server.tls.ca_file:
            ssl_options["ca_certs"] = server.tls.ca_file
        if server.tls and server.tls.cert_file:
            ssl_options["certfile"] = server.tls.cert_file
        if server.tls and server.tls.key_file:
            ssl_options["keyfile"] = server.tls.key_file
        self._server = server
        self._metrics_session = requests.Session()
        self._headers = dict(server.headers) or None
        self._client = httpclient.InferenceServerClient(
            address,
            connection_timeout=server.timeout_seconds,
            network_timeout=server.timeout_seconds,
            ssl=https,
            ssl_options=ssl_options or None,
            insecure=bool(server.tls and server.tls.insecure),
        )

    def repository_index(self) -> list[dict]:
        return self._client.get_model_repository_index(headers=self._headers)

    def model_config(self, model: str, version: str) -> dict:
        return self._client.get_model_config(model, version, headers=self._headers)

    def statistics(self) -> list[dict]:
        return self._client.get_inference_statistics(headers=self._headers).get("model_stats", [])

    def metrics_text(self) -> str | None:
        return _fetch_metrics(self._server, self._metrics_session)


class GrpcTritonClient:
    """gRPC answers as JSON: int64 fields arrive as strings, which the readers convert."""

    def __init__(self, server: ServerConfig) -> None:
        import tritonclient.grpc as grpcclient  # noqa: PLC0415 - heavy import, only when used

        tls = server.tls

        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        self._server = server
        self._metrics_session = requests.Session()
        self._headers = dict(server.headers) or None
        self._timeout = server.timeout_seconds
        self._client = grpcclient.InferenceServerClient(
            server.url,
            ssl=tls is not None,
            root_certificates=read(tls.ca_file) if tls else None,
            private_key=read(tls.key_file) if tls else None,
            certificate_chain=read(tls.cert_file) if tls else None,
        )

    def repository_index(self) -> list[dict]:
        answer = self._client.get_model_repository_index(headers=self._headers, as_json=True, client_timeout=self._timeout)
        return answer.get("models", [])

    def model_config(self, model: str, version: str) -> dict:
        answer = self._client.get_model_config(model, version, headers=self._headers, as_json=True,
                                               client_timeout=self._timeout)
        return answer.get("config", {})

    def statistics(self) -> list[dict]:
        answer = self._client.get_inference_statistics(headers=self._headers, as_json=True, client_timeout=self._timeout)
        return answer.get("model_stats", [])

    def metrics_text(self) -> str | None:
        return _fetch_metrics(self._server, self._metrics_session)
