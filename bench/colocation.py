"""Adding peaks against verifying them: `python bench/colocation.py [--duration 4s]`

Eight sample models with rates and p99 budgets on a Triton server held to one core (a device whose
capacity its models share). First each model is replayed alone at its rate (``gpupack verify``, one
device per model): its p99 alone, and its CPU share (CPU time per request x rate) as utilisation,
make the profile every plan adds up; each budget is at least twice the model's p99 alone, so every
model meets it alone with room. Then three plans:

- additive: ``gpupack plan --demand`` packs by adding utilisations, up to 100% of the core;
- latency-aware: ``--latency-aware`` also refuses a device where a model's p99, estimated by the
  M/G/1 queue from its measurement alone (scheduler/demand/latency.py), would pass its budget;
- verified: ``--verify`` replays every device, forbids the groups that break a budget together and
  re-plans until every device passes.

Each plan is then replayed once more by ``gpupack verify`` and the budget breaches counted: copies
whose p99 is over their budget or that did not serve their rate. The target: 0 breaches for the
verified plan with at most one device more than the additive one. Last, the latency model beside
what verify measured on the additive plan's devices.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpupack.domain import Resource
from gpupack.model_configs import ConfigPoint, ModelConfig
from gpupack.scheduler.demand.latency import Load, latency_copy
from gpupack.testing import SampleModel, TritonServer, write_model_repository

UTIL = Resource.GPU_UTILIZATION

MIB = 2**20
# (model, CPU seconds per request, rate per second, p99 budget in seconds)
MODELS = (
# Together 80% of the core: one device by adding, far from one by queueing (a light model waits
# behind a heavy request), on a core the machine's other work also uses.
    ("heavy-a", 0.06, 3, 0.25), ("heavy-b", 0.06, 3, 0.25),
    ("medium-a", 0.03, 4, 0.15), ("medium-b", 0.03, 4, 0.15),
    ("light-a", 0.005, 10, 0.05), ("light-b", 0.005, 10, 0.05),
    ("light-c", 0.01, 5, 0.08), ("light-d", 0.01, 5, 0.08),
)
COST = {name: cpu * rate for name, cpu, rate, _ in MODELS}  # each model's share of the core at its rate
BUDGET = {name: budget for name, _, _, budget in MODELS}
RATE = {name: float(rate) for name, _, rate, _ in MODELS}


def gpupack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpupack", *args], capture_output=True, text=True, timeout=1800)


def verify(plan: dict[str, Any], work: Path, name: str, server: TritonServer, duration: str) -> list[dict[str, Any]]:
    path = work / f"{name}.json"
    path.write_text(json.dumps(plan))
    result = gpupack("verify", "--plan", str(path), "--demand", str(work / "demand.yaml"), "--server", server.http_url,
                     "--duration", duration, "--format", "json")
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise SystemExit(f"gpupack verify failed ({result.returncode}): {result.stderr[-4000:]}")
    return json.loads(result.stdout)["devices"]


def demand_text() -> str:
    return "demand:\n" + "".join(f"  - {{model: {name}, rate_per_second: {rate}, latency_p99_seconds: {BUDGET[name]:.4f}}}\n"
                                 for name, _, rate, _ in MODELS)


def profile_text(alone: dict[str, float]) -> str:
    """Each model as measured alone at its rate: its share of the core, and its p99."""
    rows = "".join(
        f"  - {{model: {name}, peak_gpu_memory_bytes: 64MiB, throughput_per_second: {rate}, "
        f"latency_p99_seconds: {alone[name]:.6f}, peak_gpu_utilization_ratio: {COST[name]:.4f}}}\n"
        for name, _, rate, _ in MODELS)
    return "server_baseline: {peak_gpu_memory_bytes: 0}\nmodels:\n" + rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", default="4s", help="each device's replay (default: 4s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        repository = write_model_repository(work / "models", [SampleModel(name, 8 * MIB, compute_seconds=cpu)
                                                              for name, cpu, _, _ in MODELS])
        (work / "demand.yaml").write_text(demand_text())
        server = TritonServer(repository, name="one-core", cpus={max(os.sched_getaffinity(0))}, log_path=work / "triton.log")
        rows, additive = [], None
        with server.start():
            singles = {"devices": [{"name": f"alone-{name}", "copies": [{"model": name, "config": "profiled",
                                                                          "rate_per_second": rate}]}
                                   for name, _, rate, _ in MODELS]}
            alone = {d["models"][0]["model"]: d["models"][0]["p99_seconds"] or 0.0
                     for d in verify(singles, work, "alone", server, args.duration)}
            # Every model meets its budget alone, with room: at least twice its p99 alone (a busy
            # machine's core adds its own delay to every request).
            BUDGET.update({name: max(budget, 2 * alone[name]) for name, budget in BUDGET.items()})
            (work / "demand.yaml").write_text(demand_text())
            (work / "profile.yaml").write_text(profile_text(alone))
            common = ["plan", "--profile", str(work / "profile.yaml"), "--device-memory", "1GiB",
                      "--demand", str(work / "demand.yaml"), "--format", "json"]
            plans = (("additive", []), ("latency-aware", ["--latency-aware"]),
                     ("verified", ["--verify", "--server", server.http_url, "--duration", args.duration]))
            for name, extra in plans:
                started = time.monotonic()
                planned = gpupack(*common, *extra)
                seconds = time.monotonic() - started
                if planned.returncode not in (0, 1) or not planned.stdout.strip():
                    raise SystemExit(f"gpupack plan failed ({planned.returncode}): {planned.stderr[-4000:]}")
                document = json.loads(planned.stdout)
                measured = verify(document, work, name, server, args.duration)
                rows.append((name, document, measured, seconds))
                if name == "additive":
                    additive = (document, measured)
                if extra and "--verify" in extra:
                    print(planned.stderr, file=sys.stderr)
    print(f"{len(MODELS)} models on a Triton server held to one core; every plan replayed for {args.duration} a device "
          "by gpupack verify")
    print("| plan | devices | budget breaches measured by verify (copies / devices) | verification rounds | planning time |")
    print("|---|---|---|---|---|")
    for name, document, measured, seconds in rows:
        copies = sum(not m["passed"] for d in measured for m in d["models"])
        failing = sum(not d["passed"] for d in measured)
        rounds = len(document.get("verification_rounds", [])) or "-"
        print(f"| {name} | {document['device_count']} | {copies} / {failing} | {rounds} | {seconds:.0f} s |")
    for name, document, _, _ in rows:
        print(f"{name}: " + "; ".join(" + ".join(c["model"] for c in d["copies"]) for d in document["devices"]))
    if additive is not None:
        print("\nThe latency model (scheduler/demand/latency.py, from each model's p99 alone) on the additive plan's "
              "devices:")
        print("| device | model | planned utilisation | p99 alone | p99 estimated | p99 measured | budget |")
        print("|---|---|---|---|---|---|---|")
        for device in additive[1]:
            loads = [Load(m["model"], COST[m["model"]], RATE[m["model"]]) for m in device["models"]]
            for m, load in zip(device["models"], loads):
                config = ModelConfig("profiled", 0, (ConfigPoint(RATE[m["model"]], {UTIL: COST[m["model"]]},
                                                                 latency_p99_seconds=alone[m["model"]]),))
                copy = latency_copy(load, config, BUDGET[m["model"]])
                estimate = copy.estimated_p99_seconds(loads) if copy is not None else math.nan
                measured_p99 = m["p99_seconds"]
                print(f"| {device['name']} | {m['model']} | {sum(COST[x.name] for x in loads):.0%} | "
                      f"{alone[m['model']] * 1000:.0f} ms | {estimate * 1000:.0f} ms | "
                      f"{'-' if measured_p99 is None else f'{measured_p99 * 1000:.0f} ms'} | "
                      f"{BUDGET[m['model']] * 1000:.0f} ms |")

if __name__ == "__main__":
    main()
