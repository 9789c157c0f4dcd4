"""Exporter benchmark: ``python bench/exporter.py``. Prints each figure next to its target.

1. Scale, fed at the client boundary (fake Triton clients and a fake pynvml of our own
   interfaces): 1,000 models over 4 servers (250 each) and 8 GPUs (each server's models spread over
   2 GPUs), sampled at 5 Hz while /metrics is scraped (each scrape of a new snapshot): scrape
   p50/p99, payload, exporter RSS.
2. Real Triton servers on this machine with 50 models (2 x 25, host backend): the exporter's CPU
   at 5 Hz, as a share of one core, against the same process idle over the same time.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpupack.exporter.collector import SnapshotCollector  # noqa: E402
from gpupack.exporter.daemon import Exporter, settle_heap  # noqa: E402
from gpupack.exporter.exposition import TextRenderer, text_format  # noqa: E402
from gpupack.exporter.settings import ExporterSettings, ServerConfig  # noqa: E402
from gpupack.exporter.sources.nvml import NvmlDoor  # noqa: E402
from gpupack.testing import SampleModel, triton_fleet, write_model_repository  # noqa: E402
from gpupack.testing.tritonserver import free_port  # noqa: E402
from tests.exporter.fakes import FakeGpu, FakeTritonClient, fake_pynvml  # noqa: E402

MIB = 2**20
SERVERS, GPUS, MODELS = 4, 8, 1000
SCRAPES = 150


def _settings(servers: list[ServerConfig], state_dir: Path, backends: tuple[str, ...]) -> ExporterSettings:
    return ExporterSettings("127.0.0.1", free_port(), tuple(servers), backends, 0.2, 7 * 86400.0, state_dir)


def _fleet_clients() -> dict[str, FakeTritonClient]:
    clients = {}
    per_server = MODELS // SERVERS
    for s in range(SERVERS):
        models = {}
        for m in range(per_server):
            gpu = 2 * s + m % 2
            models[f"model_{s}_{m:03d}"] = {
                "config": {"instance_group": [{"kind": "KIND_GPU", "count": 1, "gpus": [gpu]}]},
                "stats": {"inference_stats": {"compute_infer": {"count": m, "ns": m * 1_000_000}},
                          "memory_usage": [{"type": "GPU", "id": gpu, "byte_size": (m % 50 + 1) * 10 * MIB}]},
            }
        clients[f"triton-{s}"] = FakeTritonClient(models)
    return clients


_SCRAPER = """
import json, random, sys, time, requests
session, times, size = requests.Session(), [], 0
for _ in range(int(sys.argv[2])):
    time.sleep(float(sys.argv[3]) * random.uniform(1.0, 2.0))
    started = time.perf_counter()
    size = len(session.get(sys.argv[1], timeout=10).content)
    times.append(time.perf_counter() - started)
print(json.dumps([times, size]))
"""


def _scrape_times(url: str, count: int, pause_seconds: float = 0.0) -> tuple[list[float], int]:
    """Scrape from another process, as Prometheus would: the client must not share our GIL."""
    out = subprocess.run([sys.executable, "-c", _SCRAPER, url, str(count), str(pause_seconds)], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    times, size = json.loads(out)
    return times, size


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("  ok" if ok else "  MISSED")
    print(f"  {label:<44} {value:>14}   {target}{verdict}")


def bench_scale() -> None:
    print(f"1) {MODELS} models x {GPUS} GPUs x {SERVERS} servers, fed at the client boundary, sampling at 5 Hz")
    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    clients = _fleet_clients()
    gpus = [FakeGpu(f"GPU-{i:08d}-0000-0000-0000-000000000000") for i in range(GPUS)]
    servers = [ServerConfig(name, f"http://10.0.0.{i}:8000") for i, name in enumerate(clients)]
    with tempfile.TemporaryDirectory() as state, Exporter(
        _settings(servers, Path(state), ("nvml",)), client_factory=lambda s: clients[s.name],
        nvml_door=NvmlDoor(fake_pynvml(gpus)),
    ) as exporter:
        settle_heap()  # as `gpupack exporter` does once started
        baseline_times, baseline_size = _scrape_times(f"{exporter.url}/healthz", SCRAPES)
        time.sleep(2.0)
        snapshot = exporter.holder.get()
        time.sleep(0.5)
        next_snapshot = exporter.holder.get()
        # Pauses longer than a sample, of random length (not in step with the sampler): each scrape
        # renders a new snapshot, as Prometheus's do; back to back, most would get the previous page.
        times, size = _scrape_times(f"{exporter.url}/metrics", SCRAPES, pause_seconds=0.2)
        api_times, api_size = _scrape_times(f"{exporter.url}/api/v1/peaks", 50)
        rss = psutil.Process().memory_info().rss
        sample_seconds = snapshot.collect_duration_seconds or 0.0
    renders = []
    for _ in range(50):
        started = time.perf_counter()
        text_format(SnapshotCollector(lambda: snapshot).collect())
        renders.append(time.perf_counter() - started)
    # What one scrape renders: each render follows one of a different snapshot.
    renderer, warm_renders = TextRenderer(), []
    for i in range(51):
        snap = (snapshot, next_snapshot)[i % 2]
        started = time.perf_counter()
        renderer.render(SnapshotCollector(lambda: snap).collect())
        warm_renders.append(time.perf_counter() - started)
    warm_renders = warm_renders[1:]
    p50, p99 = _percentile(times, 50), _percentile(times, 99)
    base_p50 = _percentile(baseline_times, 50)
    _row("models attributed in one sample", f"{len(snapshot.models)}", f"(expected {MODELS})", len(snapshot.models) == MODELS)
    _row("/metrics scrape p50", f"{p50 * 1000:.1f} ms", f"(/healthz on the same server: {base_p50 * 1000:.2f} ms, x{p50 / base_p50:.0f})")
    _row("/metrics scrape p99", f"{p99 * 1000:.1f} ms", "target <= 25 ms", p99 <= 0.025)
    warm_p50 = _percentile(warm_renders, 50)
    _row("  render of a new snapshot alone (p50/p99)",
         f"{warm_p50 * 1000:.1f}/{_percentile(warm_renders, 99) * 1000:.1f} ms",
         f"(cold, without the line cache: {_percentile(renders, 50) * 1000:.1f}/{_percentile(renders, 99) * 1000:.1f} ms)")
    _row("  load average during the run", f"{psutil.getloadavg()[0]:.1f}", f"(on {psutil.cpu_count()} cores)")
    _row("/metrics payload", f"{size / 1024:.0f} KiB", f"({size // MODELS} B per model)")
    _row("/api/v1/peaks p50 / payload", f"{_percentile(api_times, 50) * 1000:.1f} ms", f"{api_size / 1024:.0f} KiB")
    _row("one sample (attribute + peaks + snapshot)", f"{sample_seconds * 1000:.1f} ms", "(200 ms between samples at 5 Hz)")
    _row("exporter RSS (whole process)", f"{rss / MIB:.0f} MiB", "target <= 150 MB", rss <= 150 * 10**6)
    _row("  of which the exporter's own state", f"{(rss - rss_before) / MIB:.0f} MiB", f"(interpreter + imports before: {rss_before / MIB:.0f} MiB)")


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def bench_real_cpu(measure_seconds: float = 20.0) -> None:
    print("2) sampler CPU at 5 Hz against real Triton servers with 50 models (host backend)")
    models = [SampleModel(f"m{i:02d}", 1 * MIB) for i in range(50)]
    with tempfile.TemporaryDirectory() as work:
        repository = write_model_repository(Path(work) / "models", models)
        started = time.monotonic()
        with triton_fleet(repository, ["triton-0", "triton-1"], log_dir=Path(work) / "logs") as fleet:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: fleet[i % 2].load_model(models[i].name), range(len(models))))
            print(f"  (50 models loaded on 2 servers in {time.monotonic() - started:.0f} s)")
            idle_before = _cpu_seconds()
            threading.Event().wait(measure_seconds / 4)
            idle_share = (_cpu_seconds() - idle_before) / (measure_seconds / 4)
            servers = [ServerConfig(s.name, s.http_url, pid=s.pid, metrics_url=s.metrics_url) for s in fleet]
            with Exporter(_settings(servers, Path(work) / "state", ("host",))) as exporter:
                settle_heap()
                time.sleep(2.0)
                loaded = len(exporter.holder.get().models)
                cpu_before, wall_before = _cpu_seconds(), time.monotonic()
                threading.Event().wait(measure_seconds)
                share = (_cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
    _row("models measured", f"{loaded}", "(expected 50)", loaded == 50)
    _row("exporter CPU at 5 Hz, share of one core", f"{share * 100:.2f} %", "target <= 3 %", share <= 0.03)
    _row("same process idle (baseline)", f"{idle_share * 100:.2f} %", f"(exporter adds {(share - idle_share) * 100:.2f} points)")


if __name__ == "__main__":
    bench_scale()
    bench_real_cpu()
