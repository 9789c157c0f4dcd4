"""The profiler's load generator against a plain synchronous tritonclient loop, in the same run.

Both keep the same number of requests in flight against the same real Triton server (CPU, a
Python-backend model that does almost nothing, so the client's own cost shows): the built-in one
with asyncio workers writing pre-serialised requests, one keep-alive connection each, the plain
one with a thread per request slot, each with its own synchronous client, as a quick script
would. Printed: requests/s and client CPU time per request (this process's user + system time),
and the ratios. Client and server share the machine's cores, so a cheaper client also leaves the
server more CPU: both columns count.

    python bench/loadgen.py [--duration 3] [--concurrency 1,4,8]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpupack.config import split_list
from gpupack.profiler.control import ServerControl
from gpupack.profiler.loadgen import LoadGenerator, random_inputs, signature_from_config
from gpupack.testing import SampleModel, TritonServer, write_model_repository

MODEL = SampleModel("echo", 0, max_batch_size=8)


@dataclass(frozen=True)
class Measured:
    requests: int
    seconds: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_per_request_seconds(self) -> float:
        return self.cpu_seconds / self.requests


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def built_in(address: str, concurrency: int, duration_seconds: float) -> Measured:
    signature = signature_from_config(ServerControl(address).config(MODEL.name))
    generator = LoadGenerator(address, signature)
    cpu = _cpu_seconds()
    window = generator.run(1, concurrency, duration_seconds)
    return Measured(window.success_count + window.error_count, window.elapsed_seconds, _cpu_seconds() - cpu)


def plain_sync(address: str, concurrency: int, duration_seconds: float) -> Measured:
    import tritonclient.http as httpclient

    signature = signature_from_config(ServerControl(address).config(MODEL.name))
    array = random_inputs(signature, 1, np.random.default_rng(0))["INPUT0"]
    counts = [0] * concurrency

    def loop(slot: int, deadline: float) -> None:
        client = httpclient.InferenceServerClient(address)
        tensor = httpclient.InferInput("INPUT0", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        while time.perf_counter() < deadline:
            client.infer(MODEL.name, [tensor])
            counts[slot] += 1
        client.close()

    cpu = _cpu_seconds()
    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i, started + duration_seconds)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Measured(sum(counts), time.perf_counter() - started, _cpu_seconds() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default: 3)")
    parser.add_argument("--concurrency", default="1,4,8", help="requests in flight (default: 1,4,8)")
    args = parser.parse_args()
    repository = write_model_repository(Path(tempfile.mkdtemp(prefix="bench-loadgen-")), [MODEL])
    with TritonServer(repository, name="bench-loadgen") as server:
        server.load_model(MODEL.name)
        print(f"{'concurrency':>11}  {'client':<10} {'req/s':>8} {'CPU/request':>12}")
        for concurrency in (int(c) for c in split_list(args.concurrency)):
            built_in(server.http_address, concurrency, 0.5)  # warm-up: imports, connections
            ours = built_in(server.http_address, concurrency, args.duration)
            plain = plain_sync(server.http_address, concurrency, args.duration)
            for name, m in (("built-in", ours), ("plain sync", plain)):
                print(f"{concurrency:>11}  {name:<10} {m.per_second:>8.0f} {m.cpu_per_request_seconds * 1e6:>9.0f} µs")
            print(f"{'':>11}  ratio      {ours.per_second / plain.per_second:>7.2f}x "
                  f"{ours.cpu_per_request_seconds / plain.cpu_per_request_seconds:>9.2f}x  (built-in / plain)")


if __name__ == "__main__":
    main()
