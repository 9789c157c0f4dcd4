"""Measure each model alone on a Triton server across batch sizes and concurrency, as Triton Model
Analyzer does: the server alone first (the baseline), then per model throughput, latency
percentiles and the device's peaks above the baseline. Writes the profile that gpupack plan reads;
with --search, tries each model's configurations and recommends the best within the constraints."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from gpupack.config import ConfigFile, Setting, resolve_settings, split_list
from gpupack.errors import ExitStatus, InputError
from gpupack.servers import SERVERS_SETTING
from gpupack.profiler.choose import Limits, choose_point, why_no_point
from gpupack.profiler.control import ServerControl
from gpupack.profiler.loadgen import LoadGenerator
from gpupack.profiler.output import OWN_CONFIG, to_profile, write_whole_profile
from gpupack.profiler.rank import OBJECTIVES
from gpupack.profiler.report import ProgressLine, format_summary
from gpupack.profiler.search import STRATEGIES
from gpupack.profiler.session import Stop, default_backend, probe_factory, server_under_test, stopped_by_signals
from gpupack.profiler.sweep import Sweep, SweepPlan, SweepResult
from gpupack.profiler.target import Target, resolve_target
from gpupack.profiler.variants import INSTANCE_KINDS
from gpupack.units import UnitError, parse_bytes, parse_count, parse_duration, parse_rate

SECTION = "profile"
BACKENDS = ("host", "nvml")


def _names(value: Any) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(split_list(value)))
    if not names:
        raise ValueError(f"{value!r} names no model")
    return names


def _positive_ints(value: Any) -> tuple[int, ...]:
    numbers = []
    for item in split_list(value):
        try:
            numbers.append(parse_count(item))
        except UnitError:
            raise UnitError(f"{item!r} in {value!r} is not a positive whole number") from None
    if not numbers:
        raise UnitError(f"{value!r} names no number")
    return tuple(dict.fromkeys(numbers))


def _backend(value: Any) -> str:
    if value not in BACKENDS:
        raise ValueError(f"unknown backend {value!r} (known: {', '.join(BACKENDS)})")
    return str(value)


def _boolean(value: Any) -> bool:
    words = {"true": True, "false": False}
    if isinstance(value, bool):
        return value
    if str(value).lower() not in words:
        raise ValueError(f"{value!r} is not true or false")
    return words[str(value).lower()]


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return str(value)
    return parse


def _on_off(value: Any) -> tuple[bool, ...]:
    words = {"off": False, "on": True}
    items = split_list(value)
    if not items or any(item not in words for item in items):
        raise ValueError(f"{value!r} is not a list of off and on")
    return tuple(dict.fromkeys(words[item] for item in items))


def _rates(value: Any) -> tuple[float, ...]:
    rates = tuple(dict.fromkeys(parse_rate(item) for item in split_list(value)))
    if not rates:
        raise ValueError(f"{value!r} names no rate")
    return rates


def _durations(value: Any) -> tuple[float, ...]:
    return tuple(dict.fromkeys(parse_duration(item) for item in split_list(value)))


def _kinds(value: Any) -> tuple[str, ...]:
    items = [item.lower() for item in split_list(value)]
    unknown = [item for item in items if item not in INSTANCE_KINDS]
    if not items or unknown:
        raise ValueError(f"{value!r}: instance kinds are {', '.join(INSTANCE_KINDS)}")
    return tuple(dict.fromkeys(INSTANCE_KINDS[item] for item in items))


def _percentage(value: Any) -> float:
    """perf_analyzer's ``--stability-percentage``: ``10`` (or ``10%``) is 10%, kept as the ratio 0.1."""
    try:
        number = float(str(value).strip().removesuffix("%"))
    except ValueError:
        raise UnitError(f"{value!r} is not a percentage (write 10 for 10%)") from None
    if number <= 0:
        raise UnitError(f"stability percentage {value!r} must be above 0")
    return number / 100




SETTINGS = (
    Setting("model_repository", str, None),
    Setting("models", _names, None),
    Setting("batch", _positive_ints, (1,)),
    Setting("concurrency", _positive_ints, None),
    Setting("request_rate", _rates, None),
    Setting("server", str, None),
    SERVERS_SETTING,  # read by load_servers: the servers --server NAME picks from
    Setting("shared_server", _boolean, False),
    # Measurement that stops when it is stable: see profiler/stats.py.
    Setting("duration", parse_duration, 5.0),
    Setting("warmup", parse_duration, 1.0),
    Setting("stability_percentage", _percentage, 0.10),
    Setting("latency_budget", parse_duration, None),
    Setting("max_memory", parse_bytes, None),
    Setting("out", str, "profile.yaml"),
    Setting("report", str, None),
    Setting("backend", _backend, None),
    Setting("search", _choice(*STRATEGIES), None),
    Setting("instances", _positive_ints, (1, 2, 4)),
    Setting("instance_kind", _kinds, None),
    Setting("max_batch", _positive_ints, (1, 4, 8)),
    Setting("dynamic_batching", _on_off, (False, True)),
    Setting("max_queue_delay", _durations, (0.0,)),
    Setting("min_throughput", lambda v: float(v), None),
    Setting("objective", _choice(*OBJECTIVES), "throughput"),
    Setting("top", parse_count, 3),
    Setting("out_repository", str, None),
)
LEGACY_CONCURRENCY = (1,)
# Every way to be asked to stop: each ends the run as Ctrl-C does (what was loaded is unloaded,
# a server started here is stopped, what was measured is written).


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", metavar="DIR", help="repository to start a server over (when no --server)")
    parser.add_argument("--models", metavar="NAME,...", help="models to profile, one at a time")
    parser.add_argument("--batch", metavar="N,...", help="batch sizes (default: 1)")
    parser.add_argument("--concurrency", metavar="N,...", help="requests in flight (default: 1)")
    parser.add_argument("--request-rate", metavar="RATE,...", help="instead of --concurrency: requests per second "
                        "(10, 20/s, 1200/m), sent on a fixed schedule; a ramp stops at the first rate served short")
    parser.add_argument("--server", metavar="URL", help="a Triton server in explicit model-control mode, with no "
                        "model loaded (or a server's name from the config file's servers; default: the one server "
                        "it lists, else one started over --model-repository)")
    parser.add_argument("--shared-server", action="store_true", default=None,
                        help="measure on a server that has other models loaded, leaving them loaded and untouched: "
                        "their traffic can lower the throughput and raise the latency measured, and the server "
                        "baseline includes their memory")
    # Measurement that stops when it is stable: see profiler/stats.py.
    parser.add_argument("--duration", metavar="DURATION", help="the longest a point is measured (default: 5s): in "
                        "windows of a tenth of it, until three in a row agree within --stability-percentage")
    parser.add_argument("--stability-percentage", metavar="N", help="how far apart (max over min, in %%) the last "
                        "three windows' throughput and mean latency may be for a point to count as stable, as "
                        "perf_analyzer's flag (default: 10)")
    parser.add_argument("--warmup", metavar="DURATION", help="load after each model (or configuration) is loaded, "
                        "before its first point, not measured (default: 1s)")
    parser.add_argument("--latency-budget", metavar="DURATION",
                        help="p99 budget: stop raising concurrency once p99 passes it; such points are not chosen")
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="choose no point (or configuration) whose peak memory is above this, like 4GiB")
    parser.add_argument("--out", metavar="FILE", help="profile to write, .yaml, .json or .csv (default: profile.yaml)")
    parser.add_argument("--report", metavar="DIR", help="also write a report here: every point as CSV and plots "
                        "as PNG; with --search, report.html (tables and plots in one file) and configs.csv")
    parser.add_argument("--backend", choices=BACKENDS, help="host (CPU-only servers) or nvml (GPUs); "
                        "default: nvml with an NVIDIA driver, else host")
    search = parser.add_argument_group("configuration search (with --search)")
    search.add_argument("--search", choices=STRATEGIES, help="exhaustive (every configuration) or quick "
                        "(hill-climbing); without it, the model's own configuration is swept over --batch and "
                        "--concurrency")
    search.add_argument("--instances", metavar="N,...", help="instance counts to try (default: 1,2,4)")
    search.add_argument("--instance-kind", metavar="KIND,...", help="instance kinds to try, cpu or gpu "
                        "(default: the model's own)")
    search.add_argument("--max-batch", metavar="N,...", help="max_batch_size values to try (default: 1,4,8)")
    search.add_argument("--dynamic-batching", metavar="off,on", help="dynamic batching settings to try (default: off,on)")
    search.add_argument("--max-queue-delay", metavar="DURATION,...", help="dynamic batching's maximum queue delays "
                        "to try (default: 0s)")
    search.add_argument("--min-throughput", metavar="N", help="recommend no configuration below N inferences/s")
    search.add_argument("--objective", choices=OBJECTIVES, help="throughput (default) or throughput-per-gib")
    search.add_argument("--top", metavar="N", help="configurations to list per model (default: 3)")
    search.add_argument("--out-repository", metavar="DIR", help="write each model's chosen config.pbtxt here")
    search.add_argument("--resume", action="store_true", help="continue an interrupted search from its checkpoint")
    together = parser.add_argument_group("models measured together (instead of --models)")
    together.add_argument("--colocate", metavar="NAME,...", action="append", help="load these models on one server "
                          "and drive them all at once, at --request-rate or --concurrency (one value for all, or one "
                          "per model in order); each is also measured alone, and the group is added to the profile's "
                          "colocations (repeat for several groups)")
    together.add_argument("--colocate-from-plan", metavar="FILE", help="measure each device of a plan (gpupack plan "
                          "--format json) together: a demand plan's copies at their rates and configurations")


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    values = resolve_settings(SECTION, SETTINGS, config, os.environ, vars(args))
    if args.colocate or args.colocate_from_plan:
        from gpupack.profiler.colocate_cli import run_from_flags  # noqa: PLC0415 - one path or the other

        return run_from_flags(args, values, config)
    if not values["models"]:
        raise InputError("no model to profile (give --models NAME,...)")
    if values["request_rate"] and values["concurrency"]:
        raise InputError("give --concurrency or --request-rate, not both: a ramp raises one load")
    if args.resume and not values["search"]:
        raise InputError("--resume continues a configuration search: give --search too")
    target = resolve_target(values, config, bool(values["shared_server"]))
    backend = values["backend"] or default_backend()
    with stopped_by_signals() as stop:
        try:
            return _measure(values, bool(args.resume), target, backend, stop)
        except KeyboardInterrupt:
            print(f"gpupack profile: stopped by {stop.name or 'SIGINT'}", file=sys.stderr)
            return stop.exit_status


def _measure(values: dict[str, Any], resume: bool, target: Target, backend: str, stop: "Stop") -> int:
    with server_under_test(target) as (address, pid):
        probes = probe_factory(backend, address, pid, target.shared_with)
        notes = _shared_notes(target)
        for note in notes:
            print(f"gpupack profile: {note}", file=sys.stderr)
        if values["search"]:
            from gpupack.profiler.search_cli import run_search  # noqa: PLC0415 - one path or the other

            return run_search(values, resume, address, probes, target, notes, stop.exit_status)
        values["concurrency"] = values["concurrency"] or LEGACY_CONCURRENCY
        plan = SweepPlan(values["models"], values["batch"], values["concurrency"], values["duration"],
                         values["warmup"], values["latency_budget"], values["request_rate"] or (),
                         values["stability_percentage"])
        control = ServerControl(address)
        progress = ProgressLine()
        sweep = Sweep(plan, control, probes, lambda signature: LoadGenerator(address, signature),
                      on_progress=progress, shared_with=target.shared_with)
        try:
            result = sweep.run()
        finally:
            progress.close()
    return _finish_sweep(values, result, notes, stop.exit_status)


def _finish_sweep(values: dict[str, Any], result: SweepResult, notes: list[str], stopped_status: int) -> int:
    limits = Limits(values["latency_budget"], values["max_memory"])
    chosen = {o.model: point for o in result.models if (point := choose_point(o.points, limits)) is not None}
    print(format_summary(result, chosen))
    # The model a stop or a dead server cut short was not measured through: it is left out, not rejected.
    finished = result.models[:-1] if result.interrupted or result.server_error else result.models
    rejected = {o.model: [(OWN_CONFIG, o.failure or why_no_point(o.points, limits))]
                for o in finished if o.model not in chosen}
    if result.baseline is not None and (chosen or rejected):
        if not write_whole_profile(to_profile(result, chosen), rejected, values["out"], notes):
            print(f"gpupack profile: {values['out']} is CSV, which holds one peak per model: "
                  f"{', '.join(rejected)} left out (write .yaml or .json to keep them)", file=sys.stderr)
        print(f"wrote {values['out']}", file=sys.stderr)
    else:
        print("gpupack profile: no model was measured: no profile written", file=sys.stderr)
    if values["report"]:
        from gpupack.profiler.plots import write_report  # noqa: PLC0415 - matplotlib only for --report

        write_report(values["report"], result, chosen)
        print(f"wrote the report to {values['report']}", file=sys.stderr)
    if result.interrupted:
        print("gpupack profile: interrupted: the profile holds the points measured so far", file=sys.stderr)
        return stopped_status
    if result.server_error:
        print(f"gpupack profile: error: {result.server_error}; the profile holds the points measured before",
              file=sys.stderr)
        return ExitStatus.FAILURE
    if rejected:
        print(f"gpupack profile: no point within the limits for {', '.join(rejected)}: written as rejected, "
              "so gpupack plan refuses them by name", file=sys.stderr)
    return ExitStatus.FAILURE if rejected else ExitStatus.OK


def _shared_notes(target: Target) -> list[str]:
    if not target.shared_with:
        return []
    return [f"measured on a shared server ({target.server.url if target.server else ''}) with "
            f"{', '.join(sorted(target.shared_with))} loaded beside each model (--shared-server): their traffic "
            "may lower the throughput and raise the latencies measured; the server baseline includes their memory"]
