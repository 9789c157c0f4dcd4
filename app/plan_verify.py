"""`gpupack plan`, and with --verify the plan replayed before anyone applies it.

The scheduler plans and runs the verify loop (``gpupack.scheduler.verify_loop``) against any
:class:`~gpupack.verification.Verifier`; the verifier that replays devices on Triton is the
profiler's, and only this layer may know both, so ``plan`` is registered here.
"""

from __future__ import annotations

import argparse
import sys

from gpupack.config import ConfigFile
from gpupack.errors import InputError
from gpupack.profiles import load_profile
from gpupack.scheduler import plan_cli
from gpupack.scheduler.verify_loop import Verification
from gpupack.units import UnitError, parse_duration
from gpupack.verification import PlannedDevice

VERIFY_HELP = """
With --demand, --verify replays each planned device on a scratch server (--server URL, or
--model-repository DIR to start one) at its planned rates for --duration, forbids every group of
models that failed together (no plan puts all of them on one device again) and plans again, until
every device passes or --verify-time-limit ends. It prints each round and what it learned; the plan
says which devices were verified (JSON: each device's "verified", and "verification_rounds"). Exit 1
when a device still fails.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    plan_cli.configure(parser)
    parser.description = (plan_cli.__doc__ or "").strip() + "\n" + VERIFY_HELP.rstrip()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    group = parser.add_argument_group("verifying the plan (with --demand)")
    group.add_argument("--verify", action="store_true",
                       help="replay each device on a scratch server, forbid the groups that fail together and re-plan "
                            "until every device passes (exit 1 when one still fails)")
    group.add_argument("--server", metavar="URL", help="with --verify: a scratch Triton server in explicit model-control "
                       "mode, with no model loaded, whose repository holds the models")
    group.add_argument("--model-repository", metavar="DIR", help="with --verify, instead of --server: start a server "
                       "over DIR")
    group.add_argument("--duration", metavar="DURATION", default="10s",
                       help="with --verify: how long each device's traffic is replayed, after a warm-up (default: 10s)")
    group.add_argument("--verify-time-limit", metavar="DURATION", default="10m",
                       help="with --verify: when to stop planning again and verifying (default: 10m)")


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    if not args.verify:
        if args.server or args.model_repository:
            raise InputError("--server and --model-repository say where --verify replays the plan: add --verify")
        return plan_cli.run(args, config)
    duration, time_limit = _duration("--duration", args.duration), _duration("--verify-time-limit", args.verify_time_limit)
    if not (args.server or args.model_repository):
        raise InputError("--verify replays the plan on a scratch server: give --server URL or --model-repository DIR")
    # The profiler (tritonclient and its load generators) only when verifying: a plan's time limit
    # counts from process start.
    from gpupack.profiler.session import stopped_by_signals  # noqa: PLC0415
    from gpupack.profiler.verify import PlanVerifier, verify_target  # noqa: PLC0415

    profile = load_profile(args.profile)
    target = verify_target(args.server, args.model_repository, [m.model for m in profile.models], config)
    where = f"on {args.server or args.model_repository}, {duration:g} s per device"
    with stopped_by_signals() as stop:
        try:
            with PlanVerifier(target, duration, profile=profile, on_device=_say) as verifier:
                return plan_cli.run(args, config, Verification(verifier, time_limit, where))
        except KeyboardInterrupt:
            print(f"gpupack plan: stopped by {stop.name or 'SIGINT'}; nothing is left loaded", file=sys.stderr)
            return stop.exit_status


def _duration(flag: str, value: str) -> float:
    try:
        seconds = parse_duration(value)
    except UnitError as e:
        raise InputError(str(e), field=flag) from e
    if seconds <= 0:
        raise InputError("must be above 0", field=flag)
    return seconds


def _say(device: PlannedDevice) -> None:
    print(f"verifying {device.name}: " + ", ".join(f"{c.model} at {c.rate_per_second:g}/s" for c in device.copies),
          file=sys.stderr, flush=True)
