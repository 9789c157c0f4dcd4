"""The one door to Triton's HTTP API (tritonclient) for everything that drives a server.

The scheduler moves models with it, the profiler loads, measures and unloads them, and the test
harness sets servers up. Everything above deals in plain values and :class:`TritonControlError`;
only this module knows tritonclient's exceptions and its transport's. A client is made per call
because tritonclient's HTTP client is not thread-safe, and each carries the caller's timeout as
its network timeout, so a hung load cannot outlive the step that asked for it. (The exporter
reads servers through its own long-lived, read-only clients in ``exporter/triton_source.py``.)
"""

from __future__ import annotations

import json
from http.client import HTTPException
from typing import Any, Mapping

import numpy as np
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from gpupack.addresses import http_client_address
from gpupack.errors import GpupackError
from gpupack.servers import ServerConfig
from gpupack.timing import WaitTimeout, wait_until


class TritonControlError(GpupackError):
    """Triton refused or did not answer; the message names the server and the model.

    ``reason`` is Triton's own words (or the transport's), for callers that word it their way;
    ``answered`` is False when the server was not reached at all (refused, timed out).
    """

    def __init__(self, message: str, reason: str = "", *, answered: bool = True) -> None:
        super().__init__(message)
        self.reason = reason or message
        self.answered = answered


class TritonControl:
    """Model control on one server."""

    def __init__(self, endpoint: ServerConfig, timeout_seconds: float = 60.0) -> None:
        self.endpoint = endpoint
        self.timeout_seconds = timeout_seconds

    def _client(self) -> triton_http.InferenceServerClient:
        address, https = http_client_address(self.endpoint.url)
        return triton_http.InferenceServerClient(
            address,
            ssl=https,
            connection_timeout=self.timeout_seconds,
            network_timeout=self.timeout_seconds,
        )

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self._client()
        try:
            return getattr(client, method)(*args, **kwargs)
        except InferenceServerException as e:
            reason = _one_line(e.message() or str(e))
            raise TritonControlError(f"{self.endpoint.name}: {what}: {reason}", reason) from e
        except (OSError, HTTPException) as e:  # refused, reset, timed out, closed mid-answer
            reason = _one_line(str(e)) or type(e).__name__
            raise TritonControlError(f"{self.endpoint.name} ({self.endpoint.url}): {what}: {reason}", reason,
                                     answered=False) from e
        finally:
            client.close()

    def is_live(self) -> bool:
        try:
            return bool(self._call("checking liveness", "is_server_live"))
        except TritonControlError:
            return False

    def ready_models(self) -> dict[str, str]:
        """Model -> version of every READY model, from the repository index."""
        index = self._call("reading the repository index", "get_model_repository_index")
        return {entry["name"]: str(entry.get("version", "")) for entry in index if entry.get("state") == "READY"}

    def repository_index(self) -> dict[str, str]:
        """Model -> state (READY, UNAVAILABLE, or "" when never loaded) of every model in the repository."""
        index = self._call("reading the repository index", "get_model_repository_index")
        return {entry["name"]: str(entry.get("state", "")) for entry in index}

    def model_config(self, model: str) -> dict[str, Any]:
        return self._call(f"reading the config of {model}", "get_model_config", model)

    def load(self, model: str, config: Mapping[str, Any] | None = None) -> None:
        """Load, or reload with ``config`` replacing the repository's config.pbtxt."""
        self._call(f"loading {model}", "load_model", model, config=json.dumps(config) if config is not None else None)

    def unload(self, model: str) -> None:
        self._call(f"unloading {model}", "unload_model", model)

    def wait_unloaded(self, model: str, timeout_seconds: float) -> None:
        """Triton answers an unload before the model has left its index; memory readings need it gone."""
        try:
            wait_until(lambda: model not in self.ready_models(), timeout_seconds, f"{model} leaving the index",
                       interval_seconds=0.05)
        except WaitTimeout as e:
            reason = f"still loaded {timeout_seconds:.0f}s after unload"
            raise TritonControlError(f"{self.endpoint.name}: {model} {reason}", reason) from e

    def statistics(self, model: str) -> dict[str, Any]:
        """The model's entry in Triton's statistics extension: request counts and cumulative times."""
        answer = self._call(f"reading the statistics of {model}", "get_inference_statistics", model)
        entries = answer.get("model_stats") or [{}]
        return dict(entries[0])

    def is_ready(self, model: str) -> bool:
        """Whether the server says the model is ready; a server that does not answer raises
        :class:`TritonControlError`, since silence says nothing about the model."""
        return bool(self._call(f"checking {model}", "is_model_ready", model))

    def probe(self, model: str) -> None:
        """One inference with zero-filled inputs shaped from the model's metadata."""
        metadata = self._call(f"reading the metadata of {model}", "get_model_metadata", model)
        inputs = []
        for spec in metadata.get("inputs", []):
            shape = [1 if dim < 0 else dim for dim in spec["shape"]]
            tensor = triton_http.InferInput(spec["name"], shape, spec["datatype"])
            if spec["datatype"] == "BYTES":
                tensor.set_data_from_numpy(np.full(shape, b"", dtype=np.object_))
            else:
                tensor.set_data_from_numpy(np.zeros(shape, dtype=triton_to_np_dtype(spec["datatype"])))
            inputs.append(tensor)
        self._call(f"probing {model} with an inference", "infer", model, inputs)


def _one_line(text: str) -> str:
    return " ".join(text.split())
