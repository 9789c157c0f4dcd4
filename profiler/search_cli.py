"""``gpupack profile --search``: wire the search, rank what it measured, write what the user asked.

Kept apart from :mod:`gpupack.profiler.cli` (settings and the server) so each reads on one screen.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from gpupack.errors import ExitStatus
from gpupack.profiler.checkpoint import Checkpoint
from gpupack.profiler.control import ServerControl
from gpupack.profiler.guard import Guard
from gpupack.profiler.loadgen import LoadGenerator
from gpupack.profiler.output import to_search_profile
from gpupack.profiler.rank import Constraints, rank
from gpupack.profiler.report import ProgressLine
from gpupack.profiler.sampler import Probe
from gpupack.profiler.search import ConfigSearch
from gpupack.profiler.search_report import ModelRanking, format_search_summary, write_configs_csv
from gpupack.profiler.sweep import SweepPlan
from gpupack.profiler.variants import SearchSpace, batchings, write_config
from gpupack.profiles import write_profile

# Doubling from 1: the ramp stops at saturation or the budget long before the end.
SEARCH_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128)
# What a resumed search must share with the one it continues.
_CHECKPOINTED = ("models", "concurrency", "request_rate", "duration", "warmup", "latency_bound", "search", "instances",
                 "instance_kind", "max_batch", "dynamic_batching", "max_queue_delay")


def checkpoint_path(out: str) -> Path:
    return Path(f"{out}.checkpoint.json")


def run_search(values: dict[str, Any], resume: bool, address: str, probe_factory: Callable[[], Probe]) -> int:
    concurrency = values["concurrency"] or SEARCH_CONCURRENCY
    plan = SweepPlan(values["models"], (1,), concurrency, values["duration"], values["warmup"], values["latency_bound"],
                     values["request_rate"] or ())
    space = SearchSpace(values["instances"], values["max_batch"],
                        batchings(values["dynamic_batching"], values["max_queue_delay"]),
                        values["instance_kind"] or (None,))
    constraints = Constraints(values["latency_bound"], values["min_throughput"], values["memory_limit"],
                              values["objective"])
    settings = {key: _plain(values[key]) for key in _CHECKPOINTED}
    settings["concurrency"] = [] if values["request_rate"] else list(concurrency)
    path = checkpoint_path(values["out"])
    checkpoint = Checkpoint.resume(path, settings) if resume else Checkpoint(path, settings)
    progress = ProgressLine()
    # A server we started dies with us; one we were given outlives a kill -9, and the guard restores it.
    guard = Guard(address) if values["server"] else None
    search = ConfigSearch(plan, space, values["search"], constraints, checkpoint, ServerControl(address),
                          probe_factory, lambda signature: LoadGenerator(address, signature), on_progress=progress,
                          on_loaded=guard.loaded if guard else lambda model: None)
    try:
        result = search.run()
    finally:
        progress.close()
        if guard is not None:
            guard.close()
    rankings = {model: ModelRanking(*rank(found.configs, constraints)) for model, found in search.searches.items()}
    print(format_search_summary(search.searches, rankings, values["top"], values["objective"]))
    recommended = {model: r.ranked[0] for model, r in rankings.items() if r.ranked}
    if result.baseline is not None:
        write_profile(to_search_profile(result, search.searches, recommended), values["out"])
        print(f"wrote {values['out']}", file=sys.stderr)
    if values["out_repository"]:
        for model, ranked in recommended.items():
            print(f"wrote {write_config(values['out_repository'], model, ranked.config.config)}", file=sys.stderr)
    if values["report"]:
        _write_report(Path(values["report"]), search, rankings, constraints)
    if result.interrupted:
        print(f"gpupack profile: interrupted: continue with --resume (checkpoint {path})", file=sys.stderr)
        return 130
    if result.server_error:
        print(f"gpupack profile: error: {result.server_error}; continue with --resume once it is back", file=sys.stderr)
        return ExitStatus.FAILURE
    missing = [model for model in values["models"] if model not in recommended]
    if missing:
        print(f"gpupack profile: no recommendation for {', '.join(missing)}", file=sys.stderr)
        return ExitStatus.FAILURE
    return ExitStatus.OK


def _write_report(directory: Path, search: ConfigSearch, rankings: dict[str, ModelRanking],
                  constraints: Constraints) -> None:
    from gpupack.profiler.html_report import write_html_report  # noqa: PLC0415 - matplotlib only for --report

    directory.mkdir(parents=True, exist_ok=True)
    write_configs_csv(directory / "configs.csv", search.searches, rankings)
    write_html_report(directory, search.searches, rankings, constraints)
    print(f"wrote the report to {directory} (report.html, configs.csv, PNGs)", file=sys.stderr)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
