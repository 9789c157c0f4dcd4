"""``gpupack profile --search``: wire the search, rank what it measured, write what the user asked.

Kept apart from :mod:`gpupack.profiler.cli` (settings and the server) so each reads on one screen.
A model with no configuration within the constraints is written with every configuration it was
measured in and why each was rejected, never left out.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from gpupack.errors import ExitStatus
from gpupack.profiler.checkpoint import Checkpoint
from gpupack.profiler.control import ServerControl
from gpupack.profiler.guard import Guard
from gpupack.profiler.loadgen import LoadGenerator
from gpupack.profiler.output import OWN_CONFIG, to_search_profile, write_whole_profile
from gpupack.profiler.rank import Constraints, rank
from gpupack.profiler.report import ProgressLine
from gpupack.profiler.sampler import Probe
from gpupack.profiler.search import ConfigSearch
from gpupack.profiler.search_report import ModelRanking, RunHeader, format_search_summary, write_configs_csv
from gpupack.profiler.sweep import SweepPlan, SweepResult
from gpupack.profiler.target import Target
from gpupack.profiler.variants import SearchSpace, batchings, write_config
from gpupack.units import counted

# Every concurrency up to 128: the search doubles through them and bisects between, stopping at
# saturation or the budget long before the end.
SEARCH_CONCURRENCY = tuple(range(1, 129))
# What a resumed search must share with the one it continues.
_CHECKPOINTED = ("models", "concurrency", "request_rate", "duration", "warmup", "stability_percentage",
                 "latency_budget", "search", "instances", "instance_kind", "max_batch", "dynamic_batching",
                 "max_queue_delay")


def checkpoint_path(out: str) -> Path:
    return Path(f"{out}.checkpoint.json")


def run_search(values: dict[str, Any], resume: bool, address: str, probe_factory: Callable[[], Probe],
               target: Target, notes: list[str], stopped_status: int) -> int:
    concurrency = values["concurrency"] or SEARCH_CONCURRENCY
    plan = SweepPlan(values["models"], (1,), concurrency, values["duration"], values["warmup"],
                     values["latency_budget"], values["request_rate"] or (), values["stability_percentage"])
    space = SearchSpace(values["instances"], values["max_batch"],
                        batchings(values["dynamic_batching"], values["max_queue_delay"]),
                        values["instance_kind"] or (None,))
    constraints = Constraints(values["latency_budget"], values["min_throughput"], values["max_memory"],
                              values["objective"])
    settings = {key: _plain(values[key]) for key in _CHECKPOINTED}
    settings["concurrency"] = [] if values["request_rate"] else list(concurrency)
    path = checkpoint_path(values["out"])
    checkpoint = Checkpoint.resume(path, settings) if resume else Checkpoint(path, settings)
    progress = ProgressLine()
    # A server we started dies with us; one we were given outlives a kill -9, and the guard restores it.
    guard = Guard(address) if target.server is not None else None
    search = ConfigSearch(plan, space, values["search"], constraints, checkpoint, ServerControl(address),
                          probe_factory, lambda signature: LoadGenerator(address, signature), on_progress=progress,
                          on_loaded=guard.loaded if guard else lambda model: None, shared_with=target.shared_with)
    started_at, started = datetime.now(timezone.utc), time.monotonic()
    try:
        result = search.run()
    finally:
        progress.close()
        if guard is not None:
            guard.close()
    header = RunHeader(started_at, time.monotonic() - started, target.server.url if target.server else
                       f"started over {target.repository}", str(target.repository) if target.repository else None,
                       tuple(notes))
    rankings = {model: ModelRanking(*rank(found.configs, constraints)) for model, found in search.searches.items()}
    print(format_search_summary(search.searches, rankings, values["top"], values["objective"]))
    _warn_unstable(search, values["stability_percentage"])
    recommended = {model: r.ranked[0] for model, r in rankings.items() if r.ranked}
    rejected = _rejected(result, search, rankings)
    if result.baseline is not None and (recommended or rejected):
        if not write_whole_profile(to_search_profile(result, search.searches, recommended), rejected,
                                   values["out"], notes):
            print(f"gpupack profile: {values['out']} is CSV, which holds one peak per model: "
                  f"{', '.join(rejected)} left out (write .yaml or .json to keep them)", file=sys.stderr)
        print(f"wrote {values['out']}", file=sys.stderr)
    elif not result.interrupted and not result.server_error:
        print("gpupack profile: no model was measured: no profile written", file=sys.stderr)
    if values["out_repository"]:
        for model, ranked in recommended.items():
            print(f"wrote {write_config(values['out_repository'], model, ranked.config.config)}", file=sys.stderr)
    if values["report"]:
        _write_report(Path(values["report"]), search, rankings, constraints, header)
    if result.interrupted:
        print(f"gpupack profile: interrupted: continue with --resume (checkpoint {path})", file=sys.stderr)
        return stopped_status
    if result.server_error:
        print(f"gpupack profile: error: {result.server_error}; continue with --resume once it is back", file=sys.stderr)
        return ExitStatus.FAILURE
    if rejected:
        print(f"gpupack profile: no configuration within the constraints for {', '.join(rejected)}: written with "
              "the reasons each was rejected, so gpupack plan refuses them by name", file=sys.stderr)
        return ExitStatus.FAILURE
    return ExitStatus.OK


def _warn_unstable(search: ConfigSearch, tolerance_ratio: float) -> None:
    points = [p for found in search.searches.values() for c in found.configs for p in c.points if p.usable]
    unstable = [p for p in points if not p.stable]
    if unstable:
        print(f"gpupack profile: {len(unstable)} of {counted(len(points), 'point')} never had three windows in a row "
              f"within {tolerance_ratio * 100:g}% of each other (a busy machine?): each is its last three windows; "
              "--stability-percentage accepts more spread", file=sys.stderr)


def _rejected(result: SweepResult, search: ConfigSearch,
              rankings: dict[str, ModelRanking]) -> dict[str, list[tuple[str, str]]]:
    """Per model searched through without a recommendation: each configuration and why it failed
    (the model's own, when even that did not load). One a stop cut short is left out, not rejected."""
    finished = result.models[:-1] if result.interrupted or result.server_error else result.models
    rejected = {}
    for outcome in finished:
        ranking = rankings.get(outcome.model)
        if ranking is not None and ranking.ranked:
            continue
        reasons = [(config.name, reason) for config, reason in ranking.rejected] if ranking else []
        rejected[outcome.model] = reasons or [(OWN_CONFIG, outcome.failure or "no configuration was measured")]
    return rejected


def _write_report(directory: Path, search: ConfigSearch, rankings: dict[str, ModelRanking],
                  constraints: Constraints, header: RunHeader) -> None:
    from gpupack.profiler.html_report import write_html_report  # noqa: PLC0415 - matplotlib only for --report

    directory.mkdir(parents=True, exist_ok=True)
    write_configs_csv(directory / "configs.csv", search.searches, rankings)
    write_html_report(directory, search.searches, rankings, constraints, header)
    print(f"wrote the report to {directory} (report.html, configs.csv, PNGs)", file=sys.stderr)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
