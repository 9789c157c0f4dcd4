"""The built-in load generator: a fixed number of requests always in flight, for a set time.

Each of ``concurrency`` workers sends one request, waits for its answer and sends the next, over
one asyncio HTTP client: one thread however high the concurrency, so the client does not compete
with the server it measures by thread count (``bench/loadgen.py`` measures its CPU per request
against a plain synchronous loop). Inputs are random tensors shaped from the model's own config,
with the batch dimension when the model batches.

A window ends when its time is up *and every request sent in it has answered*: no request is in
flight at either edge, so the server's own counters read before and after cover exactly the
requests counted here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from gpupack.errors import GpupackError

# Triton's config data types -> numpy; BYTES (strings) is left out: its shape says nothing of size.
_NUMPY_TYPES = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
}
_ERROR_SAMPLES = 3  # distinct error messages kept per window: enough to say what went wrong
_INPUT_SETS = 4  # random inputs cycled through, so that no cache answers from a repeat


class UnsupportedModelError(GpupackError):
    """The model's config cannot be turned into inputs (a string input, an unknown type)."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str  # Triton's wire name: FP32, INT64, ...
    dims: tuple[int, ...]  # without the batch dimension; variable (-1) dimensions become 1


@dataclass(frozen=True)
class ModelSignature:
    model: str
    max_batch_size: int  # 0: the model does not batch, its requests carry no batch dimension
    inputs: tuple[InputSpec, ...]

    def supports_batch(self, batch_size: int) -> bool:
        return batch_size == 1 if self.max_batch_size == 0 else batch_size <= self.max_batch_size


def signature_from_config(config: Mapping[str, Any]) -> ModelSignature:
    """Read what to send from the model-config API's answer."""
    model = str(config.get("name", ""))
    inputs = []
    for entry in config.get("input", ()):
        triton_type = str(entry.get("data_type", ""))
        if triton_type not in _NUMPY_TYPES:
            raise UnsupportedModelError(f"model {model}: input {entry.get('name')} has type {triton_type}, "
                                        "which the load generator cannot fill with random values")
        dims = tuple(max(1, int(d)) for d in entry.get("dims", ()))
        inputs.append(InputSpec(str(entry["name"]), triton_type.removeprefix("TYPE_"), dims))
    return ModelSignature(model, int(config.get("max_batch_size", 0)), tuple(inputs))


def random_inputs(signature: ModelSignature, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {}
    for spec in signature.inputs:
        shape = ((batch_size,) if signature.max_batch_size > 0 else ()) + spec.dims
        dtype = _NUMPY_TYPES[f"TYPE_{spec.datatype}"]
        if dtype is np.bool_:
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            arrays[spec.name] = rng.integers(0, 100, size=shape).astype(dtype)
        else:
            arrays[spec.name] = rng.random(size=shape).astype(dtype)
    return arrays


@dataclass(frozen=True)
class LoadWindow:
    """What one window of load did, seen from the client."""

    batch_size: int
    concurrency: int
    elapsed_seconds: float  # first send to last answer
    latencies_seconds: tuple[float, ...]  # one per successful request
    error_count: int
    error_messages: tuple[str, ...]

    @property
    def success_count(self) -> int:
        return len(self.latencies_seconds)


class LoadGenerator:
    """Drives one model on one server. ``client_factory`` makes a tritonclient.http.aio client."""

    def __init__(
        self,
        address: str,
        signature: ModelSignature,
        *,
        client_factory: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        seed: int = 0,
    ) -> None:
        self.address = address
        self.signature = signature
        self._client_factory = client_factory or _aio_client
        self._clock = clock
        self._rng = np.random.default_rng(seed)

    def run(self, batch_size: int, concurrency: int, duration_seconds: float) -> LoadWindow:
        """One window, blocking. Ctrl-C arrives as KeyboardInterrupt once in-flight requests are cancelled."""
        return asyncio.run(self.drive(batch_size, concurrency, duration_seconds))

    async def drive(self, batch_size: int, concurrency: int, duration_seconds: float) -> LoadWindow:
        if not self.signature.supports_batch(batch_size):
            raise UnsupportedModelError(
                f"model {self.signature.model}: batch size {batch_size} is above its max_batch_size "
                f"{self.signature.max_batch_size}")
        requests = [self._request(batch_size) for _ in range(_INPUT_SETS)]
        client = self._client_factory(self.address)
        latencies: list[float] = []
        errors: list[str] = []
        try:
            started = self._clock()
            deadline = started + duration_seconds
            await asyncio.gather(*(
                self._worker(client, requests[i % len(requests)], deadline, latencies, errors)
                for i in range(concurrency)
            ))
            elapsed = self._clock() - started
        finally:
            await client.close()
        return LoadWindow(batch_size, concurrency, elapsed, tuple(latencies), len(errors),
                          tuple(dict.fromkeys(errors))[:_ERROR_SAMPLES])

    def _request(self, batch_size: int) -> list[Any]:
        import tritonclient.http.aio as aioclient  # noqa: PLC0415 - heavy import, only when used

        arrays = random_inputs(self.signature, batch_size, self._rng)
        tensors = []
        for spec in self.signature.inputs:
            array = arrays[spec.name]
            tensor = aioclient.InferInput(spec.name, list(array.shape), spec.datatype)
            tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        return tensors

    async def _worker(self, client: Any, inputs: Sequence[Any], deadline: float,
                      latencies: list[float], errors: list[str]) -> None:
        model = self.signature.model
        while (sent := self._clock()) < deadline:
            try:
                await client.infer(model, inputs)
            except Exception as e:  # noqa: BLE001 - every failure is counted, whatever the library raised
                # A failed point is marked and ends its sweep anyway; stopping this worker keeps
                # a dead server from turning the window into a busy loop of refusals.
                errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
                return
            latencies.append(self._clock() - sent)


def _aio_client(address: str) -> Any:
    import tritonclient.http.aio as aioclient  # noqa: PLC0415 - heavy import, only when used

    return aioclient.InferenceServerClient(address, conn_limit=1024)
