"""A group of three profiled together by gpupack and by Triton Model Analyzer's multi-model mode.

Three sample models (different CPU costs per request) on one CPU Triton server held to one core,
each driven at the same concurrency by both tools at once: ``gpupack profile --colocate a,b,c
--concurrency N``, and Model Analyzer in remote mode with ``run_config_profile_models_concurrently_enable``
(its multi-model concurrent mode) with the search off (each model's own config, the same
concurrency), which runs one perf_analyzer per model at the same time (over HTTP, as gpupack's
load generator sends; both tools' clients are kept off the server's core). Printed: each model's
throughput and p99 by each tool, and their ratios; the target is within 10% of Model Analyzer's
throughput. Model Analyzer and perf_analyzer are installed as ``bench/profile_vs_model_analyzer.py``
installs them (a virtual environment of their own, created on first use); its multi-model mode
also needs OpenMPI's ``mpiexec`` (Debian's openmpi-bin, installed on first use).

    python bench/colocation_vs_model_analyzer.py [--concurrency 2] [--duration 5s]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from gpupack.profiles import load_profile
from gpupack.testing import SampleModel, TritonServer, write_model_repository

sys.path.insert(0, str(Path(__file__).parent))
from profile_vs_model_analyzer import TOOLS, install_tools, remote_config  # noqa: E402 - the same tools, installed once

MIB = 2**20
SERVER_CORE = max(os.sched_getaffinity(0))
MODELS = [
    SampleModel("group-a", 16 * MIB, compute_seconds=0.004),
    SampleModel("group-b", 16 * MIB, compute_seconds=0.008),
    SampleModel("group-c", 16 * MIB, compute_seconds=0.002),
]


def run_gpupack(server: TritonServer, work: Path, args: argparse.Namespace) -> tuple[float, dict[str, tuple[float, float]]]:
    out = work / "gpupack-profile.yaml"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "gpupack", "profile", "--server", server.http_url, "--backend", "host",
                    "--colocate", ",".join(m.name for m in MODELS), "--concurrency", str(args.concurrency),
                    "--duration", args.duration, "--warmup", "1s", "--out", str(out)], check=True,
                   preexec_fn=_off_the_server_core)
    wall = time.monotonic() - started
    [colocation] = load_profile(out).colocations
    return wall, {m.model: (m.together.throughput_per_second or 0.0, m.together.latency_p99_seconds or 0.0)
                  for m in colocation.models}


def run_model_analyzer(server: TritonServer, repository: Path, work: Path, args: argparse.Namespace
                       ) -> tuple[float, dict[str, tuple[float, float]]]:
    model_analyzer, perf_analyzer, env = install_tools()
    # One perf_analyzer per model, as MPI ranks: more models than cores needs oversubscribing, and
    # perf_analyzer opens "libmpi.so", which only Debian's -dev package names: a link of our own.
    libmpi = TOOLS / "mpi" / "libmpi.so"
    if not libmpi.exists():
        libmpi.parent.mkdir(exist_ok=True)
        libmpi.symlink_to(min(glob.glob("/usr/lib/*-linux-gnu/libmpi.so.40")))
    env = dict(env, OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_hwloc_base_binding_policy="none",
               LD_LIBRARY_PATH=f"{libmpi.parent}:{env.get('LD_LIBRARY_PATH', '')}")
    if shutil.which("mpiexec") is None:  # its multi-model mode starts one perf_analyzer per model under mpiexec
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "openmpi-bin"], check=True)
    export = work / "model-analyzer"
    config = {
        **remote_config(server, repository, perf_analyzer, export),
        "run_config_profile_models_concurrently_enable": True, "run_config_search_disable": True,
        "client_protocol": "http",  # as gpupack's load generator: the server's core pays the same per request
        "concurrency": [args.concurrency], "batch_sizes": [1], "skip_summary_reports": True,
        # Three perf_analyzers on one shared core never agree within its default 10%: accept windows
        # within half of each other, as profile_vs_model_analyzer.py's re-measurements do.
        "perf_analyzer_flags": {"stability-percentage": 50},
        "profile_models": {m.name: {"cpu_only": True} for m in MODELS},
    }
    (work / "ma.yaml").write_text(yaml.safe_dump(config))
    started = time.monotonic()
    with (work / "model-analyzer.log").open("w") as log:
        subprocess.run([str(model_analyzer), "profile", "-f", str(work / "ma.yaml")], stdout=log,
                       stderr=subprocess.STDOUT, env=env, cwd=work, check=True, timeout=1800,
                       preexec_fn=_off_the_server_core)
    wall = time.monotonic() - started
    return wall, model_analyzer_results(work)


def model_analyzer_results(work: Path) -> dict[str, tuple[float, float]]:
    """Per model (throughput, p99 seconds) from Model Analyzer's checkpoint: in multi-model mode its
    one measurement holds every model's perf_analyzer figures (the CSVs come with its reports)."""
    [checkpoint] = (work / "checkpoints").glob("*.ckpt")
    results = json.loads(checkpoint.read_text())["ResultManager.results"]["_results"]
    found: dict[str, tuple[float, float]] = {}
    for run_configs in results.values():
        for _, measurements in run_configs.values():
            for measurement in measurements.values():
                for model in measurement["_model_config_measurements"]:
                    metrics = model["_non_gpu_data_from_tag"]
                    found[model["_model_config_name"]] = (float(metrics["perf_throughput"][1]["_value"]),
                                                          float(metrics["perf_latency_p99"][1]["_value"]) / 1000)
    return found


def _off_the_server_core() -> None:
    """Each tool's clients run on the cores the server does not: they must not take its core."""
    others = os.sched_getaffinity(0) - {SERVER_CORE}
    if others:
        os.sched_setaffinity(0, others)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight per model (default: 2)")
    parser.add_argument("--duration", default="5s", help="gpupack's measurement window (default: 5s)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpupack-colocation-vs-ma-"))
    repository = write_model_repository(work / "models", MODELS)
    print(f"work in {work}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start")
    with TritonServer(repository, name="bench", cpus={SERVER_CORE}, log_path=work / "tritonserver.log").start() as server:
        gpupack_wall, gpupack = run_gpupack(server, work, args)
        ma_wall, ma = run_model_analyzer(server, repository, work, args)
    print(f"\n{len(MODELS)} models together on one core, concurrency {args.concurrency} each: gpupack "
          f"{gpupack_wall:.0f} s, Model Analyzer (multi-model concurrent mode) {ma_wall:.0f} s")
    print(f"  {'model':8s} {'gpupack infer/s':>15s} {'MA infer/s':>10s} {'ratio':>6s} {'gpupack p99':>11s} {'MA p99':>8s}")
    for model in MODELS:
        (ours, our_p99), (theirs, their_p99) = gpupack[model.name], ma.get(model.name, (float("nan"), float("nan")))
        print(f"  {model.name:8s} {ours:15.1f} {theirs:10.1f} {ours / theirs:6.2f} {our_p99 * 1000:8.1f} ms "
              f"{their_p99 * 1000:5.1f} ms")
    total_ours, total_theirs = sum(t for t, _ in gpupack.values()), sum(t for t, _ in ma.values())
    print(f"  {'total':8s} {total_ours:15.1f} {total_theirs:10.1f} {total_ours / total_theirs:6.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end (the machine is shared)")
    shutil.rmtree(work / "models", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
