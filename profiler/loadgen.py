"""The built-in load generator: a fixed number of requests in flight, or a fixed request rate.

Closed loop (:meth:`LoadGenerator.run`): a fixed number of requests always in flight, for a set time.

Each of ``concurrency`` workers sends one request, waits for its answer and sends the next, on a
keep-alive HTTP/1.1 connection of its own, all in one asyncio thread. A profiler's client must not
be the bottleneck of what it measures, and tritonclient's clients (HTTP, HTTP asyncio, gRPC, gRPC
asyncio and streaming alike) spend 70-200 µs of Python per request building the body and parsing
the answer. So requests are serialised once per window (by tritonclient, which owns the wire
format) and written as bytes; an answer is read by its Content-Length and only parsed when it is
an error. About 30 µs per request: ``bench/loadgen.py`` compares it with a plain synchronous
tritonclient loop. Inputs are random tensors shaped from the model's own config, with the batch
dimension when the model batches, drawn afresh for every window.

A window ends when its time is up *and every request sent in it has answered*: no request is in
flight at either edge, so the server's own counters read before and after cover exactly the
requests counted here.

Open loop (:meth:`LoadGenerator.run_at_rate`): requests sent on a constant schedule, the k-th at
``start + k / rate``, whatever the answers do, as serving traffic arrives (constant rather than
Poisson: the same offered load each run, so points compare). At most ``max_in_flight`` requests
are out at once, on that many connections: an overloaded server makes sends wait, not pile up.
A send that starts over half an interval after its time is *late*; one a whole interval behind
is *dropped* (not sent; the schedule moves on), so achieved throughput falls short of the offered
rate and says the server is saturated.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote

import numpy as np

from gpupack.addresses import host_and_port
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
MAX_IN_FLIGHT = 32  # open-loop requests out at once: rate x latency must fit below it
_INPUT_SETS = 4  # random request bodies per window, cycled through so that no cache answers from a repeat


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
class Load:
    """One load level: requests kept in flight (closed loop) or requests sent per second (open loop)."""

    concurrency: int | None = None
    request_rate_per_second: float | None = None

    def __str__(self) -> str:
        if self.request_rate_per_second is not None:
            return f"{self.request_rate_per_second:g} requests/s"
        return f"concurrency {self.concurrency}"

    @property
    def label(self) -> str:
        """For a table's load column: ``4`` (in flight) or ``20/s``."""
        if self.request_rate_per_second is not None:
            return f"{self.request_rate_per_second:g}/s"
        return str(self.concurrency)

    @property
    def sort_key(self) -> tuple[float, float]:
        return (self.concurrency or 0, self.request_rate_per_second or 0.0)


@dataclass(frozen=True)
class LoadWindow:
    """What one window of load did, seen from the client."""

    batch_size: int
    concurrency: int | None  # None in an open-loop window
    elapsed_seconds: float  # first send to last answer
    latencies_seconds: tuple[float, ...]  # one per successful request
    error_count: int
    error_messages: tuple[str, ...]
    request_rate_per_second: float | None = None  # the offered rate of an open-loop window
    late_count: int = 0  # open loop: sends that started over half an interval late
    dropped_count: int = 0  # open loop: sends skipped, a whole interval behind (the server saturated)

    @property
    def success_count(self) -> int:
        return len(self.latencies_seconds)


class LoadGenerator:
    """Drives one model on the server at ``address`` (host:port of Triton's HTTP endpoint)."""

    def __init__(
        self,
        address: str,
        signature: ModelSignature,
        *,
        clock: Callable[[], float] = time.perf_counter,
        seed: int = 0,
    ) -> None:
        self.address = address
        self.signature = signature
        self._clock = clock
        self._rng = np.random.default_rng(seed)

    def run(self, batch_size: int, concurrency: int, duration_seconds: float) -> LoadWindow:
        """One window, blocking. Ctrl-C arrives as KeyboardInterrupt once in-flight requests are cancelled."""
        return asyncio.run(self.drive(batch_size, concurrency, duration_seconds))

    def run_at_rate(self, batch_size: int, rate_per_second: float, duration_seconds: float,
                    max_in_flight: int = MAX_IN_FLIGHT) -> LoadWindow:
        """One open-loop window at ``rate_per_second`` requests, blocking."""
        return asyncio.run(self.drive_at_rate(batch_size, rate_per_second, duration_seconds, max_in_flight))

    async def drive_at_rate(self, batch_size: int, rate_per_second: float, duration_seconds: float,
                            max_in_flight: int = MAX_IN_FLIGHT) -> LoadWindow:
        if rate_per_second <= 0:
            raise ValueError(f"request rate must be positive, not {rate_per_second}")
        self._check_batch(batch_size)
        requests = itertools.cycle([self._request(batch_size) for _ in range(_INPUT_SETS)])
        latencies: list[float] = []
        errors: list[str] = []
        interval = 1.0 / rate_per_second
        total = max(1, round(rate_per_second * duration_seconds))
        late = dropped = 0
        connections = await asyncio.gather(*(_connect(self.address, errors) for _ in range(max_in_flight)))
        started = self._clock()
        next_send = 0

        async def sender(connection: _Connection) -> None:
            nonlocal next_send, late, dropped
            while next_send < total:
                k = next_send
                behind = int((self._clock() - started) / interval) - k
                if behind >= 1:  # a whole interval behind: skip to the send due now
                    skipped = min(behind, total - k)
                    dropped += skipped
                    next_send += skipped
                    continue
                next_send += 1
                due = started + k * interval
                wait = due - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif -wait > interval / 2:
                    late += 1
                sent = self._clock()
                error = await self._exchange(connection, next(requests))
                if error is not None:
                    errors.append(error)
                    return
                latencies.append(self._clock() - sent)

        try:
            await asyncio.gather(*(sender(c) for c in connections if c is not None))
            # The schedule spans total intervals, the last send's own included, however fast it answered.
            elapsed = max(self._clock() - started, total * interval)
        finally:
            for connection in connections:
                if connection is not None:
                    connection.close()
        return LoadWindow(batch_size, None, elapsed, tuple(latencies), len(errors),
                          tuple(dict.fromkeys(errors))[:_ERROR_SAMPLES], rate_per_second, late, dropped)

    def _check_batch(self, batch_size: int) -> None:
        if not self.signature.supports_batch(batch_size):
            raise UnsupportedModelError(
                f"model {self.signature.model}: batch size {batch_size} is above its max_batch_size "
                f"{self.signature.max_batch_size}")

    async def _exchange(self, connection: _Connection, request: bytes) -> str | None:
        try:
            return await connection.exchange(request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, _ProtocolError) as e:
            return f"connection to {self.address} failed: {str(e) or type(e).__name__}"

    async def drive(self, batch_size: int, concurrency: int, duration_seconds: float) -> LoadWindow:
        self._check_batch(batch_size)
        requests = [self._request(batch_size) for _ in range(_INPUT_SETS)]
        latencies: list[float] = []
        errors: list[str] = []
        # Connected before the clock starts: a connection's setup is no request's latency.
        connections = await asyncio.gather(*(_connect(self.address, errors) for _ in range(concurrency)))
        try:
            started = self._clock()
            deadline = started + duration_seconds
            await asyncio.gather(*(
                self._worker(connection, itertools.islice(itertools.cycle(requests), i, None),
                             deadline, latencies, errors)
                for i, connection in enumerate(connections) if connection is not None
            ))
            elapsed = self._clock() - started
        finally:
            for connection in connections:
                if connection is not None:
                    connection.close()
        return LoadWindow(batch_size, concurrency, elapsed, tuple(latencies), len(errors),
                          tuple(dict.fromkeys(errors))[:_ERROR_SAMPLES])

    def _request(self, batch_size: int) -> bytes:
        """One whole HTTP request (head and body) with fresh random inputs, ready to write."""
        import tritonclient.http as httpclient  # noqa: PLC0415 - heavy import, only when used

        arrays = random_inputs(self.signature, batch_size, self._rng)
        tensors = []
        for spec in self.signature.inputs:
            array = arrays[spec.name]
            tensor = httpclient.InferInput(spec.name, list(array.shape), spec.datatype)
            tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        # No outputs named: tritonclient then asks for every output in binary, which costs the
        # server least to send.
        body, json_bytes = httpclient.InferenceServerClient.generate_request_body(tensors)
        head = (f"POST /v2/models/{quote(self.signature.model, safe='')}/infer HTTP/1.1\r\n"
                f"Host: {self.address}\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Inference-Header-Content-Length: {json_bytes}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode("ascii") + body

    async def _worker(self, connection: _Connection, requests: Iterator[bytes], deadline: float,
                      latencies: list[float], errors: list[str]) -> None:
        while (sent := self._clock()) < deadline:
            error = await self._exchange(connection, next(requests))
            if error is not None:
                # A failed point is marked and ends its sweep anyway; stopping this worker keeps
                # a dead server from turning the window into a busy loop of refusals.
                errors.append(error)
                return
            latencies.append(self._clock() - sent)


class _ProtocolError(Exception):
    """An answer that is not the HTTP/1.1 Triton sends."""


class _Connection:
    """One keep-alive HTTP/1.1 connection: one request written, its whole answer read, the next."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def exchange(self, request: bytes) -> str | None:
        """None when Triton answered 200, else its error message."""
        self._writer.write(request)
        await self._writer.drain()
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, _, fields = head.partition(b"\r\n")
        length = _content_length(fields)
        body = await self._reader.readexactly(length)
        if status_line[9:12] == b"200":
            return None
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            message = body.decode(errors="replace")
        return f"{status_line[9:].decode(errors='replace')}: {message}".splitlines()[0]

    def close(self) -> None:
        self._writer.close()


def _content_length(fields: bytes) -> int:
    # Triton frames every answer by Content-Length; anything else would desynchronise the stream.
    for field in fields.split(b"\r\n"):
        name, _, value = field.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    raise _ProtocolError("answer without Content-Length")


async def _connect(address: str, errors: list[str]) -> _Connection | None:
    host, port = host_and_port(address)
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        errors.append(f"cannot connect to {address}: {e}")
        return None
    return _Connection(reader, writer)
