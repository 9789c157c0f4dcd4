"""What a Triton failure means to a profiling run: skip the model, or stop.

The calls themselves go through :class:`~gpupack.triton.control.TritonControl`; this layer sorts
its errors into :class:`ModelLoadError` (that model is skipped and the sweep goes on) and
:class:`ServerGoneError` (nothing more can be measured), and reads counters only once they settle.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from gpupack.errors import GpupackError
from gpupack.profiler.stats import TritonCounters
from gpupack.triton.control import TritonControl, TritonControlError
from gpupack.servers import ServerConfig

_COUNTER_SETTLE_SECONDS = 0.02
_COUNTER_SETTLE_LIMIT_SECONDS = 1.0

T = TypeVar("T")


class ModelLoadError(GpupackError):
    """Triton refused to load a model; the profiler reports it and goes on with the next."""


class ServerGoneError(GpupackError):
    """The server stopped answering; nothing more can be measured."""


class ServerControl:
    """Explicit model control of the profiled server. ``address`` is ``host:port``."""

    def __init__(self, address: str, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, timeout_seconds: float = 120.0) -> None:
        self.address = address
        # Loading a large model takes as long as it takes: the network timeout must allow it.
        self._triton = TritonControl(ServerConfig(address, f"http://{address}"), timeout_seconds)
        self._clock = clock
        self._sleep = sleep
        self._timeout_seconds = timeout_seconds

    def live(self) -> bool:
        return self._triton.is_live()

    def ready_models(self) -> list[str]:
        return sorted(self._answer("list models", self._triton.ready_models))

    def load(self, model: str, config: dict | None = None) -> None:
        """Load as the repository has it, or with ``config`` in place of its config.pbtxt."""
        try:
            self._triton.load(model, config)
        except TritonControlError as e:
            if not self.live():
                raise ServerGoneError(f"server {self.address} stopped answering while loading {model}") from e
            raise ModelLoadError(f"model {model} failed to load: {e.reason}") from e

    def unload(self, model: str) -> None:
        """Unload and wait until Triton no longer lists the model as ready."""
        self._answer(f"unload {model}", self._triton.unload, model)
        try:
            self._triton.wait_unloaded(model, self._timeout_seconds)
        except TritonControlError as e:  # names the model: "still loaded 120s after unload", or what failed
            raise ServerGoneError(f"server {e}") from e

    def config(self, model: str) -> dict:
        return self._answer(f"read the config of {model}", self._triton.model_config, model)

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
        return TritonCounters.from_statistics(self._answer(f"read statistics of {model}", self._triton.statistics, model))

    def _answer(self, what: str, call: Callable[..., T], *args: Any) -> T:
        try:
            return call(*args)
        except TritonControlError as e:
            raise ServerGoneError(f"server {self.address} did not answer ({what}): {e.reason}") from e
