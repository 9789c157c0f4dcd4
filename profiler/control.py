"""The profiled server's control plane: load, unload, config, statistics, liveness.

The one place that knows tritonclient's exceptions for the profiler: everything above deals in
:class:`ModelLoadError` (that model is skipped) and :class:`ServerGoneError` (the run stops).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from gpupack.errors import GpupackError
from gpupack.profiler.stats import TritonCounters

_COUNTER_SETTLE_SECONDS = 0.02
_COUNTER_SETTLE_LIMIT_SECONDS = 1.0


class ModelLoadError(GpupackError):
    """Triton refused to load a model; the profiler reports it and goes on with the next."""


class ServerGoneError(GpupackError):
    """The server stopped answering; nothing more can be measured."""


class ServerControl:
    """Explicit model control over HTTP. ``address`` is ``host:port``, as tritonclient wants it."""

    def __init__(self, address: str, *, client: Any = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, timeout_seconds: float = 120.0) -> None:
        if client is None:
            import tritonclient.http as httpclient  # noqa: PLC0415 - heavy import, only when used

            # Loading a large model takes as long as it takes: the network timeout must allow it.
            client = httpclient.InferenceServerClient(address, connection_timeout=timeout_seconds,
                                                      network_timeout=timeout_seconds)
        self.address = address
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._timeout_seconds = timeout_seconds

    def close(self) -> None:
        """Drop the keep-alive connection: a server shutting down waits for open connections."""
        self._client.close()

    def live(self) -> bool:
        try:
            return bool(self._client.is_server_live())
        except Exception:  # noqa: BLE001 - any failure to answer means not live
            return False

    def ready_models(self) -> list[str]:
        index = self._call("list models", self._client.get_model_repository_index)
        return sorted(str(m["name"]) for m in index if m.get("state") == "READY")

    def load(self, model: str) -> None:
        try:
            self._client.load_model(model)
        except Exception as e:  # noqa: BLE001 - tritonclient raises its own and the transport's
            if not self.live():
                raise ServerGoneError(f"server {self.address} stopped answering while loading {model}") from e
            raise ModelLoadError(f"model {model} failed to load: {_first_line(e)}") from e

    def unload(self, model: str) -> None:
        """Unload and wait until Triton no longer lists the model as ready."""
        self._call(f"unload {model}", self._client.unload_model, model)
        deadline = self._clock() + self._timeout_seconds
        while model in self.ready_models():
            if self._clock() > deadline:
                raise ServerGoneError(f"server {self.address}: {model} still loaded {self._timeout_seconds:.0f}s after unload")
            self._sleep(0.05)

    def config(self, model: str) -> dict:
        return self._call(f"read the config of {model}", self._client.get_model_config, model)

    def counters(self, model: str) -> TritonCounters:
        """The model's counters once they stop moving: Triton may count a request just after answering it."""
        previous = self._read_counters(model)
        deadline = self._clock() + _COUNTER_SETTLE_LIMIT_SECONDS
        while True:
            self._sleep(_COUNTER_SETTLE_SECONDS)
            current = self._read_counters(model)
            if current == previous or self._clock() > deadline:
                return current
            previous = current

    def _read_counters(self, model: str) -> TritonCounters:
        answer = self._call(f"read statistics of {model}", self._client.get_inference_statistics, model)
        stats = answer.get("model_stats", [])
        return TritonCounters.from_statistics(stats[0] if stats else {})

    def _call(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except Exception as e:  # noqa: BLE001 - tritonclient raises its own and the transport's
            raise ServerGoneError(f"server {self.address} did not answer ({what}): {_first_line(e)}") from e


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
