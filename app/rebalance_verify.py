"""`gpupack rebalance`, and with --verify-on URL each target device the plan changes replayed on a
canary server before any move: a plan whose devices fail there is refused (exit 1, nothing moved).

The gate (``gpupack.scheduler.rebalance.verify_gate``) takes any
:class:`~gpupack.verification.Verifier`; the one that replays devices on Triton is the profiler's,
and only this layer may know both, so ``rebalance`` is registered here.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from gpupack.config import ConfigFile
from gpupack.errors import InputError
from gpupack.scheduler.rebalance import cli as rebalance_cli
from gpupack.units import UnitError, parse_duration
from gpupack.verification import DeviceVerdict, PlannedDevice


class CanaryVerifier:
    """The profiler's verifier on a canary server, started for the devices it is given: the models
    to check there are only known once the plan is made."""

    def __init__(self, url: str, duration_seconds: float, config: ConfigFile | None) -> None:
        self.url, self.duration_seconds, self.config = url, duration_seconds, config

    def verify(self, devices: Sequence[PlannedDevice]) -> list[DeviceVerdict]:
        from gpupack.profiler.verify import PlanVerifier, verify_target  # noqa: PLC0415 - only when verifying

        target = verify_target(self.url, None, [c.model for d in devices for c in d.copies], self.config)
        with PlanVerifier(target, self.duration_seconds) as verifier:
            return verifier.verify(devices)


def configure(parser: argparse.ArgumentParser) -> None:
    rebalance_cli.configure(parser)
    parser.description = (rebalance_cli.__doc__ or "").strip() + "\n\n" + (__doc__ or "").split("\n\n")[0]
    parser.add_argument("--verify-on", metavar="URL",
                        help="a canary Triton server (explicit model control, nothing loaded, the models in its "
                             "repository): replay each target device the plan changes there at its planned rates "
                             "before any move, and refuse the plan (exit 1, nothing moved) when one fails")
    parser.add_argument("--verify-duration", metavar="DURATION", default="10s",
                        help="with --verify-on: how long each target device is replayed (default: 10s)")


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    if not args.verify_on:
        return rebalance_cli.run(args, config)
    try:
        duration = parse_duration(args.verify_duration)
    except UnitError as e:
        raise InputError(str(e), field="--verify-duration") from e
    if duration <= 0:
        raise InputError("must be above 0", field="--verify-duration")
    return rebalance_cli.run(args, config, verifier=CanaryVerifier(args.verify_on, duration, config))
