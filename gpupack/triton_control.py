"""The one door to Triton's model-control API (tritonclient HTTP) for the scheduler.

Everything above it deals in plain values and :class:`TritonControlError`; only this module knows
tritonclient's exceptions. A client is made per call site because tritonclient's HTTP client is
not thread-safe, and each carries the step's timeout as its network timeout, so a hung load
cannot outlive its step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import numpy as np
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from gpupack.errors import GpupackError, InputError


class TritonControlError(GpupackError):
    """Triton refused or did not answer; the message names the server and the model."""


@dataclass(frozen=True)
class ServerEndpoint:
    name: str
    url: str  # http(s)://host:port

    @classmethod
    def parse(cls, text: str) -> "ServerEndpoint":
        """``NAME=URL`` as typed after ``--server``."""
        name, sep, url = text.partition("=")
        if not sep or not name or not url:
            raise InputError(f"--server {text!r}: expected NAME=URL, e.g. triton-0=http://127.0.0.1:8000")
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            raise InputError(f"--server {text!r}: URL must be http(s)://HOST:PORT")
        return cls(name, f"{parts.scheme}://{parts.hostname}:{parts.port}")


class TritonControl:
    """Model control on one server."""

    def __init__(self, endpoint: ServerEndpoint, timeout_seconds: float = 60.0) -> None:
        self.endpoint = endpoint
        self.timeout_seconds = timeout_seconds

    def _client(self) -> triton_http.InferenceServerClient:
        parts = urlsplit(self.endpoint.url)
        return triton_http.InferenceServerClient(
            f"{parts.hostname}:{parts.port}",
            ssl=parts.scheme == "https",
            connection_timeout=self.timeout_seconds,
            network_timeout=self.timeout_seconds,
        )

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self._client()
        try:
            return getattr(client, method)(*args, **kwargs)
        except InferenceServerException as e:
            raise TritonControlError(f"{self.endpoint.name}: {what}: {_one_line(e.message() or str(e))}") from e
        except (OSError, TimeoutError) as e:  # connection refused, reset, timed out
            raise TritonControlError(f"{self.endpoint.name} ({self.endpoint.url}): {what}: {e}") from e
        finally:
            client.close()

    def ready_models(self) -> dict[str, str]:
        """Model -> version of every READY model, from the repository index."""
        index = self._call("reading the repository index", "get_model_repository_index")
        return {entry["name"]: str(entry.get("version", "")) for entry in index if entry.get("state") == "READY"}

    def model_config(self, model: str) -> dict[str, Any]:
        return self._call(f"reading the config of {model}", "get_model_config", model)

    def load(self, model: str, config: Mapping[str, Any] | None = None) -> None:
        """Load, or reload with ``config`` replacing the repository's config.pbtxt."""
        self._call(f"loading {model}", "load_model", model, config=json.dumps(config) if config is not None else None)

    def unload(self, model: str) -> None:
        self._call(f"unloading {model}", "unload_model", model)

    def is_ready(self, model: str) -> bool:
        try:
            return bool(self._call(f"checking {model}", "is_model_ready", model))
        except TritonControlError:
            return False

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
