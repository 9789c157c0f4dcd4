"""gpupack's configuration search against Triton Model Analyzer's, on one server, in the same run.

Both tools search the same two sample models (a fixed cost per batch plus one per item, so
batching pays) over the same space (up to 3 instance counts x 3 max batch sizes, dynamic
batching; Model Analyzer's automatic brute search always turns dynamic batching on and adds the
model's own config) under the same p99 budget, on one CPU Triton server in explicit mode.
Printed, per tool:

- the wall time to a recommendation (Model Analyzer is stopped at 3x gpupack's time: no answer);
- each recommended config's throughput and p99, re-measured by perf_analyzer at the concurrency
  the tool chose, against the budget;
- the memory each tool reports for that config against the kernel's high-water mark (VmHWM) of
  the model's backend processes while perf_analyzer drives it.

``--quick-search`` times gpupack's default quick search alone (its own window, stability rule and
warm-up; 2 instance counts x 2 max batch sizes x dynamic batching off/on) on one model, and
re-measures the configuration it picks with perf_analyzer: the seconds, the points measured, the
throughput gpupack claims, perf_analyzer's, and their ratio.

Model Analyzer (PyPI triton-model-analyzer, remote mode, --dcgm-disable, cpu_only models) and
perf_analyzer (the binary in the tritonclient==2.51.0 manylinux wheel, which needs Debian's
libb64-0d and libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel) are installed in a
virtual environment of their own, created on first use.

    python bench/profile_vs_model_analyzer.py [--budget 100ms] [--instances 1,2,3] [--max-batch 1,2,4]
    python bench/profile_vs_model_analyzer.py --quick-search [--budget 100ms] [--instances 1,2] [--max-batch 1,4]
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from gpupack.config import split_list
from gpupack.testing import SampleModel, TritonServer, write_model_repository
from gpupack.triton.control import TritonControl
from gpupack.servers import ServerConfig
from gpupack.triton.processes import backend_processes
from gpupack.units import parse_duration

MIB = 2**20
MODELS = [
    SampleModel("batchy", 32 * MIB, compute_seconds=0.004, item_compute_seconds=0.0004),
    SampleModel("light", 16 * MIB, compute_seconds=0.001, item_compute_seconds=0.0002),
]
TOOLS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpupack" / "model-analyzer-venv"
PACKAGES = ("triton-model-analyzer==1.58.0", "tritonclient[all]==2.51.0", "nvidia-cuda-runtime-cu12")


def install_tools() -> tuple[Path, Path, dict[str, str]]:
    """(model-analyzer, perf_analyzer, environment they run in), installing them on first use."""
    if not (TOOLS / "bin" / "model-analyzer").exists():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
        subprocess.run([str(TOOLS / "bin" / "pip"), "install", "-q", *PACKAGES], check=True)
    if subprocess.run(["dpkg", "-s", "libb64-0d"], capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "libb64-0d"], check=True)
    site = Path(glob.glob(str(TOOLS / "lib" / "python3*" / "site-packages"))[0])
    perf_analyzer = TOOLS / "bin" / "perf_analyzer"  # the wheel's binary, installed as a script
    env = dict(os.environ, PATH=f"{TOOLS / 'bin'}:{os.environ['PATH']}",
               LD_LIBRARY_PATH=f"{site / 'nvidia' / 'cuda_runtime' / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    return TOOLS / "bin" / "model-analyzer", perf_analyzer, env


def run_gpupack(server: TritonServer, work: Path, args: argparse.Namespace, models: list[SampleModel],
                *measurement: str) -> tuple[float, dict[str, dict], int]:
    """Wall seconds, per model (config override, concurrency, throughput claimed, memory reported),
    and the points measured. ``measurement``: flags such as --duration (none: gpupack's defaults)."""
    out = work / "gpupack-profile.yaml"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "gpupack", "profile", "--server", server.http_url, "--backend", "host",
                    "--models", ",".join(m.name for m in models), "--search", "quick",
                    "--instances", args.instances, "--max-batch", args.max_batch, "--dynamic-batching", "off,on",
                    "--latency-budget", args.budget, *measurement, "--out", str(out),
                    "--out-repository", str(work / "gpupack-configs"), "--report", str(work / "gpupack-report")],
                   check=True)
    wall = time.monotonic() - started
    checkpoint = json.loads(Path(f"{out}.checkpoint.json").read_text())
    chosen = {}
    for entry in yaml.safe_load(out.read_text())["models"]:
        config = next(c for c in entry["configs"]
                      if any(p["throughput_per_second"] == entry["throughput_per_second"] for p in c["points"]))
        chosen[entry["model"]] = {"name": config["name"], "config": checkpoint["configs"][entry["model"]][config["name"]]["config"],
                                  "concurrency": entry["concurrency"], "memory_bytes": config["peak_gpu_memory_bytes"],
                                  "throughput_per_second": entry["throughput_per_second"]}
    points = sum(len(record["points"]) for configs in checkpoint["configs"].values() for record in configs.values())
    return wall, chosen, points


def remote_config(server: TritonServer, repository: Path, perf_analyzer: Path, export: Path) -> dict:
    """Model Analyzer's settings for a server we started (remote mode, no DCGM, CPU metrics): what
    every comparison here shares; each adds its own search."""
    return {
        "model_repository": str(repository), "triton_launch_mode": "remote",
        "triton_http_endpoint": server.http_address, "triton_grpc_endpoint": server.grpc_address,
        "triton_metrics_url": server.metrics_url, "perf_analyzer_path": str(perf_analyzer),
        "dcgm_disable": True, "collect_cpu_metrics": True, "export_path": str(export),
        "output_model_repository_path": str(export / "output"), "override_output_model_repository": True,
    }


def run_model_analyzer(server: TritonServer, repository: Path, work: Path, tools: tuple[Path, Path, dict[str, str]],
                       args: argparse.Namespace, timeout_seconds: float) -> tuple[float | None, dict[str, dict], str]:
    """Wall seconds to its recommendation (None: none in time), per model what it chose, and notes."""
    model_analyzer, perf_analyzer, env = tools
    counts = [int(n) for n in split_list(args.instances)]
    batches = [int(n) for n in split_list(args.max_batch)]
    export = work / "model-analyzer"
    config = {
        **remote_config(server, repository, perf_analyzer, export),
        "run_config_search_mode": "brute", "run_config_search_max_instance_count": max(counts),
        "run_config_search_min_model_batch_size": min(batches), "run_config_search_max_model_batch_size": max(batches),
        "latency_budget": round(parse_duration(args.budget) * 1000), "skip_summary_reports": True,
        "profile_models": {m.name: {"cpu_only": True} for m in MODELS},
    }
    (work / "ma.yaml").write_text(yaml.safe_dump(config))
    log = (work / "model-analyzer.log").open("w")
    started = time.monotonic()
    process = subprocess.Popen([str(model_analyzer), "profile", "-f", str(work / "ma.yaml")], stdout=log,
                               stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True)
    try:
        process.wait(timeout=timeout_seconds)
        wall: float | None = time.monotonic() - started if process.returncode == 0 else None
    except subprocess.TimeoutExpired:
        wall = None
    notes = []
    children = [p for p in psutil.Process(process.pid).children(recursive=True)] if process.poll() is None else []
    if process.poll() is None:
        notes.append(f"no recommendation after {timeout_seconds:.0f}s: stopped")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    elif process.returncode != 0:
        notes.append(f"exited {process.returncode} (log: {work / 'model-analyzer.log'})")
    left = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if left:
        notes.append(f"left children running: {', '.join(' '.join(p.cmdline()[:1]) for p in left)} (killed now)")
        for child in left:
            child.kill()
    loaded = TritonControl(ServerConfig("bench", server.http_url)).ready_models()
    if loaded:
        notes.append(f"left loaded: {', '.join(sorted(loaded))}")
    return wall, (_model_analyzer_choices(export) if wall is not None else {}), "; ".join(notes)


def _model_analyzer_choices(export: Path) -> dict[str, dict]:
    """Its best row per model (the CSV is sorted by its objective), and that variant's config."""
    from google.protobuf import json_format, text_format  # noqa: PLC0415
    from tritonclient.grpc import model_config_pb2  # noqa: PLC0415

    chosen: dict[str, dict] = {}
    with (export / "results" / "metrics-model-inference.csv").open() as f:
        for row in csv.DictReader(f):
            model = row.get("Model") or ""
            if model in chosen:
                continue
            variant = row.get("Model Config Path") or ""
            message = text_format.Parse((export / "output" / variant / "config.pbtxt").read_text(),
                                        model_config_pb2.ModelConfig())
            config = json_format.MessageToDict(message, preserving_proto_field_name=True)
            config["name"] = model
            memory = next((row[k] for k in sorted(row, key=lambda k: "RAM" not in k) if "RAM" in k or "Memory" in k), "")
            chosen[model] = {"name": variant, "config": config, "concurrency": int(row.get("Concurrency") or 1),
                             "memory_bytes": float(memory) * 1e6 if memory else None}
    return chosen


def remeasure(server: TritonServer, perf_analyzer: Path, env: dict[str, str], model: str, choice: dict,
              work: Path) -> tuple[float, float, int]:
    """perf_analyzer's throughput and p99 at the tool's config and concurrency, and the stubs' VmHWM."""
    control = TritonControl(ServerConfig("bench", server.http_url), 120)
    control.load(model, choice["config"])
    try:
        out = work / f"perf-{model}-{choice['name']}.csv"
        # A shared machine never holds 10% stability: accept windows within half of each other.
        answer = subprocess.run([str(perf_analyzer), "-m", model, "-u", server.grpc_address, "-i", "grpc",
                                 "--concurrency-range", str(choice["concurrency"]), "-p", "3000", "--percentile", "99",
                                 "-s", "50", "-f", str(out)], env=env, capture_output=True, text=True, timeout=300)
        if answer.returncode != 0:
            raise RuntimeError(f"perf_analyzer on {model}: {answer.stdout.strip().splitlines()[-1]}")
        row = next(csv.DictReader(out.open()))
        hwm = sum(_vm_hwm_bytes(p.pid) for p in backend_processes(server.pid) if p.model == model)
    finally:
        control.unload(model)
        control.wait_unloaded(model, 120)
    return float(row["Inferences/Second"]), float(row["p99 latency"]) / 1e6, hwm


def _vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def quick_search(args: argparse.Namespace, tools: tuple[Path, Path, dict[str, str]]) -> None:
    """gpupack's default quick search on one model, timed, and its pick re-measured by perf_analyzer."""
    model = MODELS[0]
    work = Path(tempfile.mkdtemp(prefix="gpupack-quick-search-"))
    repository = write_model_repository(work / "models", [model])
    budget = parse_duration(args.budget)
    print(f"work in {work}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start")
    with TritonServer(repository, name="bench", log_path=work / "tritonserver.log").start() as server:
        wall, chosen, points = run_gpupack(server, work, args, [model])
        choice = chosen[model.name]
        claimed = choice["throughput_per_second"]
        throughput, p99, _ = remeasure(server, tools[1], tools[2], model.name, choice, work)
    print(f"\ndefault quick search of {model.name} (instances {args.instances} x max batch {args.max_batch} x "
          f"dynamic batching off,on; p99 budget {budget * 1000:g} ms): {wall:.0f} s, {points} points")
    print(f"picked {choice['name']} at concurrency {choice['concurrency']}: gpupack claims {claimed:.1f} infer/s, "
          f"perf_analyzer measures {throughput:.1f} infer/s (ratio {throughput / claimed:.2f}), p99 {p99 * 1000:.1f} ms "
          f"{'within' if p99 <= budget else 'OVER'} budget")
    print(f"load average {os.getloadavg()[0]:.1f} at the end (the machine is shared)")
    shutil.rmtree(work / "models", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="100ms", help="p99 latency budget")
    parser.add_argument("--instances", help="instance counts to search (default: 1,2,3; 1,2 with --quick-search)")
    parser.add_argument("--max-batch", help="max batch sizes to search (default: 1,2,4; 1,4 with --quick-search)")
    parser.add_argument("--quick-search", action="store_true", help="time gpupack's default quick search on one "
                        "model and re-measure its pick with perf_analyzer (Model Analyzer is not run)")
    args = parser.parse_args()
    args.instances = args.instances or ("1,2" if args.quick_search else "1,2,3")
    args.max_batch = args.max_batch or ("1,4" if args.quick_search else "1,2,4")
    tools = install_tools()
    if args.quick_search:
        quick_search(args, tools)
        return 0
    work = Path(tempfile.mkdtemp(prefix="gpupack-vs-ma-"))
    repository = write_model_repository(work / "models", MODELS)
    budget = parse_duration(args.budget)
    print(f"work in {work}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start")
    with TritonServer(repository, name="bench", log_path=work / "tritonserver.log").start() as server:
        gpupack_wall, gpupack_choice, _ = run_gpupack(server, work, args, MODELS, "--duration", "2s", "--warmup", "0.5s")
        ma_wall, ma_choice, notes = run_model_analyzer(server, repository, work, tools, args, 3 * gpupack_wall)
        for model in list(TritonControl(ServerConfig("bench", server.http_url)).ready_models()):
            TritonControl(ServerConfig("bench", server.http_url)).unload(model)
        print(f"\nwall time to a recommendation: gpupack {gpupack_wall:.0f}s, Model Analyzer "
              + (f"{ma_wall:.0f}s (gpupack/MA = {gpupack_wall / ma_wall:.2f})" if ma_wall else "none")
              + (f"; Model Analyzer {notes}" if notes else ""))
        print(f"re-measured by perf_analyzer (p99 budget {budget * 1000:g} ms):")
        totals = {}
        for tool, choices in (("gpupack", gpupack_choice), ("Model Analyzer", ma_choice)):
            totals[tool] = 0.0
            for model, choice in choices.items():
                try:
                    throughput, p99, hwm = remeasure(server, tools[1], tools[2], model, choice, work)
                except RuntimeError as e:
                    print(f"  {tool:14s} {model:7s} {choice['name']:22s} no stable measurement: {e}")
                    continue
                within = p99 <= budget
                totals[tool] += throughput if within else 0.0
                reported = choice["memory_bytes"]
                print(f"  {tool:14s} {model:7s} {choice['name']:22s} c={choice['concurrency']:<3d} "
                      f"{throughput:8.1f} infer/s  p99 {p99 * 1000:6.1f} ms {'within' if within else 'OVER'} budget  "
                      f"memory reported {reported / MIB if reported is not None else float('nan'):7.1f} MiB "
                      f"vs VmHWM {hwm / MIB:7.1f} MiB")
        if ma_choice:
            print(f"summed throughput within budget: gpupack {totals['gpupack']:.1f}, Model Analyzer "
                  f"{totals['Model Analyzer']:.1f} (ratio {totals['gpupack'] / max(totals['Model Analyzer'], 1e-9):.2f})")
        print(f"load average {os.getloadavg()[0]:.1f} at the end (the machine is shared)")
    shutil.rmtree(work / "models", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
