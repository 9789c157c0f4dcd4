"""Verify a plan before applying it: each planned device's copies are loaded together on a scratch
server, each is sent its planned rate at the same time for --duration, and each device is judged:
it passes when every copy served its rate within its p99 budget (from --demand). Predicted and
measured memory and utilisation are shown side by side. Nothing is left loaded, whatever ends the
run. Exit 0 when every device passes, 1 when one fails."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Mapping, Sequence

from gpupack.config import ConfigFile
from gpupack.demand import load_demand
from gpupack.errors import ExitStatus, InputError
from gpupack.profiler.cli import BACKENDS
from gpupack.profiler.session import stopped_by_signals
from gpupack.profiler.planned import load_planned_devices
from gpupack.profiler.verify import MEMORY, UTILIZATION, PlanVerifier, latency_text, verify_target
from gpupack.profiles import load_profile
from gpupack.units import UnitError, counted, format_bytes, format_percent, parse_duration
from gpupack.verification import DeviceVerdict, PlannedDevice


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", metavar="FILE", required=True,
                        help="the plan to verify, as gpupack plan --format json writes it (with or without --demand)")
    parser.add_argument("--demand", metavar="FILE", help="the demand the plan was made for: each model's p99 budget")
    parser.add_argument("--profile", metavar="FILE", help="the profile the plan was made from: the configurations its "
                        "copies name, and a plain plan's rates (each model's profiled throughput)")
    parser.add_argument("--server", metavar="URL", help="a scratch Triton server in explicit model-control mode, with "
                        "no model loaded, whose repository holds the plan's models (or a server's name from the "
                        "config file)")
    parser.add_argument("--model-repository", metavar="DIR", help="instead of --server: start a server over DIR")
    parser.add_argument("--duration", metavar="DURATION", default="10s",
                        help="how long each device's traffic is replayed, after a warm-up (default: 10s)")
    parser.add_argument("--backend", choices=BACKENDS, help="host (CPU-only servers) or nvml (GPUs); "
                        "default: nvml with an NVIDIA driver, else host")
    parser.add_argument("--format", choices=["table", "json"], default="table", help="output (default: table)")


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    try:
        duration = parse_duration(args.duration)
    except UnitError as e:
        raise InputError(str(e), field="--duration") from e
    profile = load_profile(args.profile) if args.profile else None
    devices = load_planned_devices(args.plan, profile, load_demand(args.demand) if args.demand else ())
    if not (args.server or args.model_repository or config):
        raise InputError("give --server URL (a scratch server) or --model-repository DIR to start one over")
    target = verify_target(args.server, args.model_repository,
                           [c.model for device in devices for c in device.copies], config)
    verifier = PlanVerifier(target, duration, profile=profile, backend=args.backend, on_device=_say)
    verifier.check(devices)
    with stopped_by_signals() as stop:
        try:
            with verifier:
                verdicts = verifier.verify(devices)
        except KeyboardInterrupt:
            print(f"gpupack verify: stopped by {stop.name or 'SIGINT'}; nothing is left loaded", file=sys.stderr)
            return stop.exit_status
    if args.format == "json":
        import json  # noqa: PLC0415

        print(json.dumps({"devices": [v.document() for v in verdicts]}, indent=2))
    else:
        print(format_verdicts(verdicts))
    return ExitStatus.OK if all(v.passed for v in verdicts) else ExitStatus.FAILURE


def _say(device: PlannedDevice) -> None:
    print(f"verifying {device.name}: " + ", ".join(f"{c.model} at {c.rate_per_second:g}/s" for c in device.copies),
          file=sys.stderr, flush=True)


def format_verdicts(verdicts: Sequence[DeviceVerdict]) -> str:
    """One line per device (predicted → measured), one per copy under it, and the answer last."""
    rows = [("device / model", "rate", "served", "p99", "budget", "memory with server planned → measured",
             "util planned → measured", "verdict")]
    for v in verdicts:
        rows.append((v.name, "", "", "", "", _pair(v, MEMORY, format_bytes), _pair(v, UTILIZATION, format_percent),
                     "passed" if v.passed else "FAILED"))
        for m in v.models:
            rows.append((f"  {m.model}", f"{m.rate_per_second:g}/s", f"{m.served_per_second:.3g}/s",
                         latency_text(m.p99_seconds),
                         latency_text(m.budget_seconds) if m.budget_seconds is not None else "none", "", "",
                         "ok" if m.passed else m.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    failed = [v for v in verdicts if not v.passed]
    if failed:
        lines.append(f"{counted(len(failed), 'device')} of {len(verdicts)} failed: "
                     + "; ".join(f"{v.name} ({', '.join(m.model for m in v.models)})" for v in failed))
    else:
        lines.append(f"every device passed ({counted(len(verdicts), 'device')})")
    return "\n".join(lines)


def _pair(verdict: DeviceVerdict, key: str, shown: Callable[[float], str]) -> str:
    def one(values: Mapping[str, float]) -> str:
        return shown(values[key]) if key in values else "?"

    return f"{one(verdict.predicted)} → {one(verdict.measured)}"
