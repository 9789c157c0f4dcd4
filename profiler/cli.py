"""Measure each model alone on a Triton server across batch sizes and concurrency, as Triton Model
Analyzer does: the server alone first (the baseline), then per model throughput, latency
percentiles and the device's peaks above the baseline. Writes a profile that `gpupack plan` reads."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from gpupack.addresses import host_and_port, network_address
from gpupack.config import ConfigFile, Setting, resolve_settings, split_list
from gpupack.errors import ExitStatus, InputError
from gpupack.servers import ServerConfig
from gpupack.measurement.host import HostSource, find_listening_pid
from gpupack.measurement.nvml import NvmlSource
from gpupack.profiler.choose import Limits, choose_point
from gpupack.profiler.control import ServerControl
from gpupack.profiler.loadgen import LoadGenerator
from gpupack.profiler.output import to_profile
from gpupack.profiler.rank import OBJECTIVES
from gpupack.profiler.report import ProgressLine, format_summary
from gpupack.profiler.sampler import HostProbe, NvmlProbe, Probe
from gpupack.profiler.search import STRATEGIES
from gpupack.profiler.sweep import Sweep, SweepPlan
from gpupack.profiler.variants import INSTANCE_KINDS
from gpupack.profiles import write_profile
from gpupack.units import UnitError, parse_bytes, parse_count, parse_duration, parse_rate

SECTION = "profile"
BACKENDS = ("host", "nvml")
_SERVER_NAME = "profile"


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


def _default_backend() -> str:
    return "nvml" if Path("/proc/driver/nvidia/version").exists() else "host"


SETTINGS = (
    Setting("model_repository", str, None),
    Setting("models", _names, None),
    Setting("batch", _positive_ints, (1,)),
    Setting("concurrency", _positive_ints, None),
    Setting("request_rate", _rates, None),
    Setting("server", str, None),
    Setting("duration", parse_duration, 10.0),
    Setting("warmup", parse_duration, 2.0),
    Setting("latency_bound", parse_duration, None),
    Setting("memory_limit", parse_bytes, None),
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


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", metavar="DIR", help="repository to start a server over (when no --server)")
    parser.add_argument("--models", metavar="A,B,C", help="models to profile, one at a time")
    parser.add_argument("--batch", metavar="1,2,4", help="batch sizes (default: 1)")
    parser.add_argument("--concurrency", metavar="1,2,4", help="requests in flight (default: 1)")
    parser.add_argument("--request-rate", metavar="10,20,40", help="instead of --concurrency: requests per second, "
                        "sent on a fixed schedule (open loop); a ramp stops at the first rate served short")
    parser.add_argument("--server", metavar="URL", help="an idle Triton server in explicit model-control mode "
                        "(default: start one over --model-repository)")
    parser.add_argument("--duration", metavar="10s", help="measurement window per point (default: 10s)")
    parser.add_argument("--warmup", metavar="2s", help="load before each window, not measured (default: 2s)")
    parser.add_argument("--latency-budget", "--latency-bound", dest="latency_bound", metavar="20ms",
                        help="p99 budget: stop raising concurrency once p99 passes it; such points are not chosen")
    parser.add_argument("--max-memory", "--memory-limit", dest="memory_limit", metavar="4GiB",
                        help="choose no point (or config) whose peak memory is above this")
    parser.add_argument("--out", metavar="FILE", help="profile to write, .yaml/.json/.csv (default: profile.yaml)")
    parser.add_argument("--report", metavar="DIR", help="also write points.csv and plots here")
    parser.add_argument("--backend", help="host (psutil, CPU-only servers) or nvml (GPUs); "
                        "default: nvml with an NVIDIA driver, else host")
    search = parser.add_argument_group("configuration search (with --search)")
    search.add_argument("--search", help="exhaustive (every config) or quick (hill-climbing); without it, "
                        "the model's own config is swept over --batch x --concurrency")
    search.add_argument("--instances", metavar="1,2,4", help="instance counts to try (default: 1,2,4)")
    search.add_argument("--instance-kind", metavar="cpu,gpu", help="instance kinds to try (default: the model's own)")
    search.add_argument("--max-batch", metavar="1,4,8", help="max_batch_size values to try (default: 1,4,8)")
    search.add_argument("--dynamic-batching", metavar="off,on", help="dynamic batching settings to try (default: off,on)")
    search.add_argument("--max-queue-delay", metavar="0s,1ms", help="dynamic batching's max queue delays to try (default: 0s)")
    search.add_argument("--min-throughput", metavar="N", help="recommend no config below N inferences/s")
    search.add_argument("--objective", help="throughput (default) or throughput-per-gib")
    search.add_argument("--top", metavar="N", help="configs to list per model (default: 3)")
    search.add_argument("--out-repository", metavar="DIR", help="write each model's chosen config.pbtxt here")
    search.add_argument("--resume", action="store_true", help="continue an interrupted search from its checkpoint")


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    values = resolve_settings(SECTION, SETTINGS, config, os.environ, vars(args))
    if not values["models"]:
        raise InputError("no model to profile (give --models a,b,c)")
    if not values["server"] and not values["model_repository"]:
        raise InputError("give --server URL, or --model-repository DIR to start a server over")
    if values["request_rate"] and values["concurrency"]:
        raise InputError("give --concurrency or --request-rate, not both: a ramp raises one load")
    if values["search"]:
        from gpupack.profiler.search_cli import run_search  # noqa: PLC0415 - one path or the other

        with _server(values["server"], values["model_repository"]) as (address, pid):
            return run_search(values, bool(args.resume), address,
                              _probe_factory(values["backend"] or _default_backend(), address, pid))
    if args.resume:
        raise InputError("--resume continues a configuration search: give --search too")
    values["concurrency"] = values["concurrency"] or LEGACY_CONCURRENCY
    plan = SweepPlan(values["models"], values["batch"], values["concurrency"], values["duration"],
                     values["warmup"], values["latency_bound"], values["request_rate"] or ())
    limits = Limits(values["latency_bound"], values["memory_limit"])
    backend = values["backend"] or _default_backend()
    with _server(values["server"], values["model_repository"]) as (address, pid):
        control = ServerControl(address)
        progress = ProgressLine()
        sweep = Sweep(plan, control, _probe_factory(backend, address, pid),
                      lambda signature: LoadGenerator(address, signature), on_progress=progress)
        try:
            result = sweep.run()
        finally:
            progress.close()
    chosen = {o.model: point for o in result.models if (point := choose_point(o.points, limits)) is not None}
    print(format_summary(result, chosen))
    if result.baseline is not None:
        write_profile(to_profile(result, chosen), values["out"])
        print(f"wrote {values['out']}", file=sys.stderr)
    else:
        print("nothing was measured: no profile written", file=sys.stderr)
    if values["report"]:
        from gpupack.profiler.plots import write_report  # noqa: PLC0415 - matplotlib only for --report

        write_report(values["report"], result, chosen)
        print(f"wrote the report to {values['report']}", file=sys.stderr)
    if result.interrupted:
        print("gpupack profile: interrupted: the profile holds the points measured so far", file=sys.stderr)
        return 130
    if result.server_error:
        print(f"gpupack profile: error: {result.server_error}; the profile holds the points measured before",
              file=sys.stderr)
        return ExitStatus.FAILURE
    return ExitStatus.FAILURE if any(o.failure for o in result.models) else ExitStatus.OK


@contextlib.contextmanager
def _server(url: str | None, model_repository: str | None) -> Iterator[tuple[str, int | None]]:
    """(host:port, pid or None) of the server to profile; one started here is stopped on the way out."""
    if url:
        address = network_address(url)
        _, port = host_and_port(address)
        yield address, find_listening_pid(port) if port else None
        return
    from gpupack.triton.launcher import TritonServer  # noqa: PLC0415 - only when we start one

    repository = Path(str(model_repository))
    if not repository.is_dir():
        raise InputError("is not a directory", field=f"--model-repository {repository}")
    log_path = Path(tempfile.mkstemp(prefix="gpupack-profile-tritonserver-", suffix=".log")[1])
    with TritonServer(repository, name=_SERVER_NAME, log_path=log_path).start() as server:
        print(f"started tritonserver (pid {server.pid}, log {log_path})", file=sys.stderr)
        yield server.http_address, server.pid


def _probe_factory(backend: str, address: str, pid: int | None) -> Callable[[], Probe]:
    server = ServerConfig(name=_SERVER_NAME, url=f"http://{address}", pid=pid)
    if backend == "host":
        if pid is None:
            raise InputError(f"--backend host needs the server on this machine; nothing here listens on {address}")
        return lambda: HostProbe(HostSource(server))
    nvml = NvmlSource()
    return lambda: NvmlProbe(nvml, HostSource(server) if pid is not None else None)
