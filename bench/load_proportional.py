"""Is utilisation proportional to load? `python bench/load_proportional.py [--duration 4]`

The demand planner assumes a copy serving a fraction of a measured point's rate is that fraction as
busy (linear from (0, 0) below the first point). This checks it on a real Triton server (CPU-only
here: utilisation is the server process tree's CPU share, as the profiler measures it): for each
sample model it finds the highest rate one copy sustains (the profiler's load generator at
concurrency 1), then sends requests at 25, 50 and 75% of it at fixed times (the load generator's
open loop, ``run_at_rate``), and prints the measured utilisation beside
the one the planner would interpolate from the 100% point. The server's idle share is measured
first and subtracted, as profiles exclude the server baseline. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from gpupack.profiler.control import ServerControl
from gpupack.profiler.loadgen import LoadGenerator, signature_from_config
from gpupack.testing import SampleModel, TritonServer, write_model_repository

MIB = 2**20
MODELS = (SampleModel("busy-5ms", 16 * MIB, compute_seconds=0.005),
          SampleModel("busy-20ms", 16 * MIB, compute_seconds=0.02))
FRACTIONS = (0.25, 0.5, 0.75)


def tree_cpu_seconds(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def utilization_during(pid: int, work, seconds: float) -> tuple[float, object]:
    """The tree's CPU share of all cores while ``work`` runs (``seconds`` when idle)."""
    cpu, started = tree_cpu_seconds(pid), time.perf_counter()
    result = work() if work else time.sleep(seconds)
    elapsed = time.perf_counter() - started
    return (tree_cpu_seconds(pid) - cpu) / (elapsed * psutil.cpu_count()), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per point (default: 4)")
    args = parser.parse_args()
    repository = write_model_repository(Path(tempfile.mkdtemp(prefix="bench-proportional-")), MODELS)
    with TritonServer(repository, name="bench-proportional") as server:
        for model in MODELS:
            server.load_model(model.name)
        idle, _ = utilization_during(server.pid, None, args.duration)
        print(f"server idle: {idle * 100:.1f}% of {psutil.cpu_count()} cores (subtracted below)\n")
        print(f"{'model':<10} {'load':>5} {'rate/s':>7} {'measured':>9} {'interpolated':>13} {'error':>7}")
        for model in MODELS:
            generator = LoadGenerator(server.http_address, signature_from_config(ServerControl(server.http_address).config(model.name)))
            generator.run(1, 1, 0.5)  # warm-up
            share, window = utilization_during(server.pid, lambda: generator.run(1, 1, args.duration), 0)
            top_rate = window.success_count / window.elapsed_seconds
            top = share - idle
            print(f"{model.name:<10} {'100%':>5} {top_rate:>7.1f} {top * 100:>8.1f}% {'(the point)':>13}")
            for fraction in FRACTIONS:
                rate = top_rate * fraction
                share, _ = utilization_during(server.pid, lambda: generator.run_at_rate(1, rate, args.duration), 0)
                measured, interpolated = share - idle, top * fraction
                print(f"{'':<10} {fraction * 100:>4.0f}% {rate:>7.1f} {measured * 100:>8.1f}% {interpolated * 100:>12.1f}% "
                      f"{(interpolated - measured) * 100:>+6.1f}")
        print("\nerror: interpolated minus measured, in points of utilisation (machine shared with other work)")


if __name__ == "__main__":
    main()
