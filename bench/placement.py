"""Placement benchmark: `python bench/placement.py [--quick] [--only TEXT] [--command]`.

Prints, for the article's case studies, random fleets of 100, 1,000 and 5,000 models with three
resources, 300 models that pack in threes (at the command's default time limit), and the 1-D
bin-packing instances in ../shared/bench-data/bpp1d (known optima): devices used, lower bound,
proof status, time for gpupack's solver and for plain first-fit-decreasing. Then how often random
fleets of 100 and 250 models are proven optimal, the parts of column generation that the unit
tests check only for what they find (how much the exchange columns speed the root LP, how long the
pool's integer programme takes, how soon its background search stops), and a per-class table of
the 1-D instances for the solver and for its classic strategy (before column generation), both
measured in this run with the command's default time limit.

``--command`` instead runs every 1-D instance through the real ``gpupack plan`` command with
``--time-limit 10s``, in the units users have: as small integers (``--device-memory 1000B``), in
MiB (every size and the capacity times 2^20) and in bytes (MiB less up to 4 KiB a size, seeded),
and prints the three side by side: devices, proof and the wall time of the whole command. With
``--policy-column`` it also runs each instance as integers under an 80% GPU-memory policy (the
plan then solves twice: under the policy, and at 100% to price it), as users plan, and prints the
worst wall time of those runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from gpupack.config import split_list
from gpupack.domain import Device, ModelFootprint, Resource
from gpupack.profiles import load_profile
from gpupack.rules.policy import CapacityPolicy, PolicySet
from gpupack.scheduler.packing.bounds import device_lower_bound
from gpupack.scheduler.packing.colgen import ColumnGeneration
from gpupack.scheduler.constraints import build_problem
from gpupack.scheduler.packing.heuristic import first_fit_decreasing
from gpupack.scheduler.packing.instance import compile_problem
from gpupack.scheduler.packing.pool_mip import PoolSearch, pool_packing
from gpupack.scheduler.packing.problem import PlacementProblem
from gpupack.scheduler.plan_cli import SETTINGS as PLAN_SETTINGS
from gpupack.scheduler.packing import solver
from gpupack.scheduler.packing.solver import Strategy, solve
from gpupack.timing import Deadline, wait_until

ROOT = Path(__file__).resolve().parent.parent
BPP_DIR = ROOT.parent / "shared" / "bench-data" / "bpp1d"
GiB = 2**30
# The 1-D instances whose column generation is timed part by part: triplets, where the plain dive
# ends above the bound, Hard28, whose many distinct sizes the exchange columns are for, and the
# Scholl instance a search on fewer devices solves at once.
PARTS = ("Falkenauer_t60_00", "Falkenauer_t120_00", "Hard28_BPP13", "Hard28_BPP14", "N4W2B1R1")
PART_SECONDS = 10.0  # each root LP's, the dive's and the pool search's limit


def seed_cases() -> list[tuple[str, PlacementProblem, str]]:
    profile = load_profile(ROOT / "examples" / "seed-profile.yaml")
    devices = [Device(f"gpu-{k}", {Resource.GPU_MEMORY: 16 * GiB}) for k in range(1, 10)]
    full = PolicySet(tuple(CapacityPolicy(name=f"{r.value}-100", resource=r, max_ratio=1.0) for r in Resource))
    tight = PolicySet(tuple(CapacityPolicy(name=f"{r.value}-80", resource=r, max_ratio=0.8) for r in Resource))
    return [
        ("seed case 1 (memory)", build_problem(profile.models, devices, profile.server_baseline,
                                               limited=(Resource.GPU_MEMORY,)), "4, proven, <100 ms"),
        ("seed case 2 (3 x 100%)", build_problem(profile.models, devices, profile.server_baseline, full), "6, proven, <100 ms"),
        ("seed case 2 (3 x 80%)", build_problem(profile.models, devices, profile.server_baseline, tight), "8, proven, <100 ms"),
    ]


def random_fleet(n: int, seed: int = 1) -> PlacementProblem:
    """Models from 0.3 to 6 GB (log-uniform), 5-50% utilisation, bandwidth 20-110% of utilisation,
    on 16 GiB devices with 100% limits on all three resources."""
    rng = np.random.default_rng(seed)
    memory = np.exp(rng.uniform(np.log(0.3e9), np.log(6e9), n))
    utilization = rng.uniform(0.05, 0.5, n)
    bandwidth = np.clip(utilization * rng.uniform(0.2, 1.1, n), 0, 1)
    models = [
        ModelFootprint(f"model-{i}", {
            Resource.GPU_MEMORY: float(memory[i]),
            Resource.GPU_UTILIZATION: float(utilization[i]),
            Resource.MEMORY_BANDWIDTH_UTILIZATION: float(bandwidth[i]),
        })
        for i in range(n)
    ]
    devices = [Device(f"gpu-{k}", {Resource.GPU_MEMORY: 16 * GiB}) for k in range(1, n + 1)]
    full = PolicySet(tuple(CapacityPolicy(name=f"{r.value}-100", resource=r, max_ratio=1.0) for r in Resource))
    return build_problem(models, devices, {Resource.GPU_MEMORY: 309e6}, full)


def models_in_threes(count: int = 100, seed: int = 5) -> PlacementProblem:
    """0.5 + 0.3 + 0.2 of utilisation fill a device exactly: ``count`` devices are the optimum, and
    first-fit-decreasing, pairing the halves first, needs more."""
    shares = np.random.default_rng(seed).permutation(np.repeat([0.5, 0.3, 0.2], count))
    devices = tuple(Device(f"gpu-{k}", {Resource.GPU_MEMORY: 100}) for k in range(1, 3 * count + 1))
    models = tuple(ModelFootprint(f"m{i}", {Resource.GPU_MEMORY: 1, Resource.GPU_UTILIZATION: float(s)})
                   for i, s in enumerate(shares))
    return PlacementProblem(devices, models)


def bpp_case(path: Path) -> PlacementProblem:
    """A 1-D instance (n, capacity, then one weight a line) as memory-only placement."""
    numbers = [int(float(x)) for x in path.read_text().split()]
    n, capacity, weights = numbers[0], numbers[1], numbers[2 : 2 + numbers[0]]
    models = [ModelFootprint(f"item-{i}", {Resource.GPU_MEMORY: float(w)}) for i, w in enumerate(weights)]
    devices = [Device(f"bin-{k}", {Resource.GPU_MEMORY: capacity}) for k in range(n)]
    return PlacementProblem(devices=tuple(devices), models=tuple(models))


def bpp_instances(only: str | None) -> tuple[dict[str, int], dict[str, str], list[Path]]:
    """Known optima and classes by instance name, and the instance files (names containing ``only``;
    several texts may be given, comma-separated)."""
    with (BPP_DIR / "OPTIMA.tsv").open() as f:
        table = [row for row in csv.DictReader(f, delimiter="\t") if row["optimum"]]
    optima = {row["instance"]: int(row["optimum"]) for row in table}
    classes = {row["instance"]: row["class"] for row in table}
    wanted = split_list(only or "") or ("",)
    paths = [p for p in sorted(BPP_DIR.glob("*.txt")) if p.stem in optima and any(w in p.stem for w in wanted)]
    return optima, classes, paths


def run_case(
    name: str, problem: PlacementProblem, time_limit: float, target: str, optimum: int | None = None,
    strategy: Strategy = Strategy.PORTFOLIO,
) -> dict:
    started = time.perf_counter()
    instance = compile_problem(problem)
    ffd = first_fit_decreasing(instance)
    ffd_seconds = time.perf_counter() - started
    ffd_count = len({d for ds in (ffd or {}).values() for d in ds})
    result = solve(problem, time_limit_seconds=time_limit, strategy=strategy)
    reference = optimum if optimum is not None else result.lower_bound
    return {
        "case": name, "models": len(problem.models), "devices": result.device_count, "bound": reference,
        "gap": (result.device_count - reference) / reference, "optimal": result.optimal, "seconds": result.solve_seconds,
        "method": result.method, "ffd": ffd_count, "ffd_seconds": ffd_seconds, "target": target,
        "proof": result.proof.status.value if result.proof else "", "lower_bound": result.lower_bound,
    }


def print_rows(title: str, rows: list[dict], bound_name: str) -> None:
    print(f"\n{title}")
    print(f"{'case':34} {'models':>6} {'devices':>7} {bound_name:>7} {'gap':>6} {'proof':>13} {'time':>8} "
          f"{'method':>30} {'FFD':>5} {'FFD time':>8}  target")
    for r in rows:
        print(f"{r['case']:34} {r['models']:6} {r['devices']:7} {r['bound']:7} {r['gap']:6.1%} {r['proof']:>13} "
              f"{r['seconds'] * 1000:6.0f}ms {r['method']:>30} {r['ffd']:5} {r['ffd_seconds'] * 1000:6.0f}ms  {r['target']}")
    worse = [r["case"] for r in rows if r["devices"] > r["ffd"]]
    print(f"worse than first-fit-decreasing: {', '.join(worse) or 'never'}")


def proof_rates(sizes: tuple[int, ...], seeds: int, time_limit: float) -> None:
    """How often a random 3-resource fleet is proven optimal, and how long that took."""
    print("\nRandom 3-resource fleets: proven optimal (target: < 10 s wherever the LP bound closes the gap)")
    for n in sizes:
        rows = [run_case(f"fleet {n} seed {s}", random_fleet(n, s), time_limit, "") for s in range(1, seeds + 1)]
        proven = [r for r in rows if r["proof"] == "optimal"]
        worst = max((r["seconds"] for r in proven), default=0.0)
        gaps = [r["devices"] - r["lower_bound"] for r in rows if r["proof"] != "optimal"]
        print(f"{n:5} models: {len(proven)}/{len(rows)} proven optimal, slowest proof {worst:.2f} s; "
              f"unproven gaps (devices): {gaps or 'none'}; worse than FFD: {sum(r['devices'] > r['ffd'] for r in rows)}")


def column_generation_parts(names: tuple[str, ...] = PARTS) -> None:
    """Per instance: the root LP with and without exchange columns (the same bound, how much
    sooner); the plain dive's devices; the integer programme over the patterns priced by then,
    asked for fewer devices than the dive's (what it finds and how soon, a proof of none
    included); and how soon a background pool search returns when stopped after its first solve."""
    print(f"\nColumn generation, part by part ({PART_SECONDS:g} s a part at most)")
    print(f"{'instance':20} {'models':>6} {'LP':>4} {'root, exchanges':>16} {'root, none':>16} {'same':>5} "
          f"{'dive':>5} {'pool':>5} {'pool time':>9} {'stop':>7}")
    for name in names:
        instance = compile_problem(bpp_case(BPP_DIR / f"{name}.txt"))
        roots = {}
        for exchanges in (True, False):
            lp = ColumnGeneration(instance, None)
            if not exchanges:
                lp.master.drop_exchanges()
            started = time.perf_counter()
            roots[exchanges] = (lp.root(Deadline.after(PART_SECONDS)), time.perf_counter() - started, lp)
        (root, with_seconds, lp), (plain, without_seconds, _) = roots[True], roots[False]
        dived = len({d for ds in lp.plain_dive(Deadline.after(PART_SECONDS)).values() for d in ds})
        columns, counts = list(lp.master.columns), lp.types.counts
        started = time.perf_counter()
        found = pool_packing(columns, counts, dived, PART_SECONDS)
        pool_seconds = time.perf_counter() - started
        search = PoolSearch(columns, counts, dived, root.lp_bound, Deadline.after(PART_SECONDS))
        try:
            wait_until(lambda: search.pools_searched >= 1, PART_SECONDS, "the background search's first solve")
        finally:
            started = time.perf_counter()
            search.stop()
            stop_seconds = time.perf_counter() - started
        same = "yes" if root.lp_bound == plain.lp_bound else "NO"
        print(f"{name:20} {instance.n_models:6} {root.lp_bound:4} {with_seconds:7.2f}s {root.columns:5}col "
              f"{without_seconds:7.2f}s {plain.columns:5}col {same:>5} {dived:5} "
              f"{len(found) if found else 'none':>5} {pool_seconds:8.2f}s {stop_seconds * 1000:5.0f}ms", flush=True)


def class_table(rows: dict[Strategy, list[dict]], classes: dict[str, str]) -> None:
    """Per class: optimum hits, mean gap to the optimum, worst time, for each strategy."""
    print(f"\n{'class':18} {'n':>3}  " + "  ".join(f"{s.value + ' hits':>15} {'mean gap':>8} {'worst':>7}" for s in rows))
    present = {classes[r["case"]] for results in rows.values() for r in results}
    for name in sorted(present) + ["all"]:
        line = ""
        for strategy, results in rows.items():
            picked = [r for r in results if name == "all" or classes[r["case"]] == name]
            hits = sum(r["gap"] == 0 for r in picked)
            line += (f"  {hits:>8}/{len(picked):<3} ({hits / len(picked):4.0%}) {np.mean([r['gap'] for r in picked]):8.2%} "
                     f"{max(r['seconds'] for r in picked):6.1f}s")
        print(f"{name:18} {len(picked):3}" + line)


# How the command is fed each 1-D instance: as the small integers of the file (bytes), in MiB
# (every size and the capacity times 2^20: the same problem exactly), and as bytes measured to the
# byte (in MiB less up to JITTER_BYTES each, seeded: the known optimum still holds, as a bound).
SCALES = ("integers", "MiB", "bytes")
MiB = 2**20
JITTER_BYTES = 4096
JITTER_SEED = 26
# Users plan under policies: the plan then solves twice (under the policy, and at 100% to price
# it) within the one time limit, so --policy-column times that too.
POLICY_NAME = "80% memory"
POLICY = "policies:\n  - {name: memory-80, resource: gpu_memory, max: 80%}\n"


def scaled_instance(path: Path, scale: str) -> tuple[list[int], str]:
    """The instance's sizes in bytes and the device memory as `--device-memory` takes it."""
    numbers = [int(float(x)) for x in path.read_text().split()]
    capacity, weights = numbers[1], np.array(numbers[2 : 2 + numbers[0]], dtype=np.int64)
    if scale == "integers":
        return weights.tolist(), f"{capacity}B"
    jitter = np.random.default_rng(JITTER_SEED).integers(0, JITTER_BYTES, len(weights), endpoint=True)
    return (weights * MiB - (jitter if scale == "bytes" else 0)).tolist(), f"{capacity}MiB"


def command_check(
    paths: list[Path], optima: dict[str, int], classes: dict[str, str], limit: str = "10s", policy_column: bool = False
) -> None:
    """`gpupack plan --time-limit 10s` per instance at each of SCALES: devices and wall time,
    process start, imports and output included, which is what a user waits for; with
    ``policy_column``, also as integers under POLICY (devices, wall time; no known optimum)."""
    print(f"\n`gpupack plan --time-limit {limit}` per instance: devices (* proven optimal) and wall time")
    policy_title = f"  {'integers, ' + POLICY_NAME:>20}" if policy_column else ""
    print(f"{'case':26} {'models':>6} " + " ".join(f"{scale:>14}" for scale in SCALES) + f"  optimum{policy_title}")
    rows: list[dict[str, tuple[float, bool, float]]] = []
    under_policy: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        policies = Path(folder) / "memory-80.yaml"
        policies.write_text(POLICY)
        for path in paths:
            runs = {scale: _plan(path, scale, folder, limit) for scale in SCALES}
            rows.append(runs)
            cells = " ".join(f"{count:>5}{'*' if proven else ' '} {seconds:6.1f}s" for count, proven, seconds in runs.values())
            line = f"{path.stem:26} {len(scaled_instance(path, 'integers')[0]):6} {cells}  {optima[path.stem]:7}"
            if policy_column:
                count, _, seconds = _plan(path, "integers", folder, limit, ["--policies", str(policies)])
                under_policy.append((path.stem, count, seconds))
                # "none": no placement exists (a model above 80% of a device), said within the limit too.
                line += f"  {count if math.isfinite(count) else 'none':>12} {seconds:6.1f}s"
            print(line, flush=True)
    names = [p.stem for p in paths]
    print("\nAt the known optimum (with jitter: at most it), proven optimal, worst wall time; per class")
    print(f"{'class':18} {'n':>3}  " + "  ".join(f"{scale:>27}" for scale in SCALES))
    for name in sorted({classes[n] for n in names}) + ["all"]:
        picked = [(n, r) for n, r in zip(names, rows) if name == "all" or classes[n] == name]
        line = ""
        for scale in SCALES:
            hits = sum(r[scale][0] <= optima[n] for n, r in picked)
            proven = sum(r[scale][1] for _, r in picked)
            worst = max(r[scale][2] for _, r in picked)
            line += f"  {hits:>3}/{len(picked):<3} ({hits / len(picked):4.0%}) {proven:>3} pr {worst:5.1f}s"
        print(f"{name:18} {len(picked):3}" + line)
    if under_policy:
        name, _, seconds = max(under_policy, key=lambda run: run[2])
        print(f"\nUnder {POLICY_NAME} (integers): worst wall time {seconds:.1f} s ({name}); "
              f"{sum(math.isfinite(run[1]) for run in under_policy)}/{len(under_policy)} planned")


def _plan(path: Path, scale: str, folder: str, limit: str, extra: Sequence[str] = ()) -> tuple[float, bool, float]:
    """One `gpupack plan` of the instance at ``scale``: (devices, proven optimal, wall seconds);
    devices is infinite where the command did not answer with a plan (said on stderr)."""
    sizes, memory = scaled_instance(path, scale)
    profile = Path(folder) / f"{path.stem}.csv"
    profile.write_text("model,peak_gpu_memory_bytes\nserver_baseline,0\n" + "".join(f"item-{i},{w}\n" for i, w in enumerate(sizes)))
    command = [sys.executable, "-m", "gpupack", "plan", "--profile", str(profile), "--device-memory", memory,
               "--time-limit", limit, "--format", "json", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:  # said, and counted as a miss: never a device count
        print(f"{path.stem} in {scale} {' '.join(extra)}: exit {done.returncode}: {done.stderr.strip()[-300:]}", file=sys.stderr)
    document = json.loads(done.stdout) if done.returncode == 0 else {}
    return document.get("device_count", math.inf), document.get("proof", {}).get("status") == "optimal", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=1.5, help="solver time limit per fleet case, seconds")
    parser.add_argument("--quick", action="store_true", help="skip the 1-D instances, the proof rates and column generation part by part")
    parser.add_argument("--seeds", type=int, default=5, help="random fleets per size for the proof rates")
    parser.add_argument("--only", metavar="TEXT", help="run only the 1-D instances whose name contains TEXT")
    parser.add_argument("--command", action="store_true",
                        help="only run the whole `gpupack plan --time-limit 10s` command on the 1-D instances, as integers, MiB and bytes")
    parser.add_argument("--policy-column", action="store_true",
                        help=f"with --command: also run each instance as integers under a {POLICY_NAME} policy")
    parser.add_argument("--shares", metavar="NAME=RATIO,...",
                        help="try other budget shares of the solver for this run, e.g. COLGEN_SHARE=0.5,FIXED_COUNT_SHARE=0.8 "
                             "(in-process runs only, not --command)")
    args = parser.parse_args()
    for pair in split_list(args.shares or ""):
        name, _, value = pair.partition("=")
        if not name.endswith("_SHARE") or not hasattr(solver, name):
            parser.error(f"--shares: {name} is not one of the solver's shares")
        setattr(solver, name, float(value))
    if args.command:
        optima, classes, paths = bpp_instances(args.only)
        command_check(paths, optima, classes, policy_column=args.policy_column)
        return
    rows = [run_case(name, problem, args.time_limit, target) for name, problem, target in seed_cases()]
    targets = {100: "", 1000: "within 1% of bound, <2 s", 5000: ""}
    rows += [run_case("random fleet, 3 resources", random_fleet(n), args.time_limit, targets[n]) for n in targets]
    default_limit = next(s.default for s in PLAN_SETTINGS if s.key == "time_limit")
    rows.append(run_case("models in threes", models_in_threes(), default_limit, "<= 101 (bound 100), FFD more"))
    print_rows("Placement (bound: gpupack's lower bound)", rows, "bound")
    if args.quick or not BPP_DIR.is_dir():
        return
    proof_rates((100, 250), args.seeds, default_limit)
    column_generation_parts()
    optima, classes, paths = bpp_instances(args.only)
    by_strategy: dict[Strategy, list[dict]] = {}
    for strategy in Strategy:
        by_strategy[strategy] = [
            run_case(p.stem, bpp_case(p), default_limit, f"bound {device_lower_bound(compile_problem(bpp_case(p)))}",
                     optima[p.stem], strategy)
            for p in paths
        ]
        print_rows(f"1-D bin packing, {strategy.value} strategy (bound: known optimum)", by_strategy[strategy], "optimum")
    print(f"\n1-D bin packing per class, time limit {default_limit:g} s (the command's default)")
    class_table(by_strategy, classes)


if __name__ == "__main__":
    main()
