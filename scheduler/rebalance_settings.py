"""The rebalance settings, declared once: `gpupack rebalance` and `gpupack rules run` take the same
flags, ``GPUPACK_REBALANCE_*`` variables and ``rebalance:`` config section, from these declarations.

Kept apart from the CLI so that `gpupack rules` can add the flags without importing the solver.
"""

from __future__ import annotations

import argparse

from gpupack.config import Setting, default_state_dir
from gpupack.scheduler.safety import LOCK_SETTING
from gpupack.units import parse_bytes, parse_count, parse_duration

SETTINGS = (
    Setting("policies", str, help="policy YAML file or directory"),
    Setting("exporter", str, help="exporter URL serving /api/v1/peaks"),
    Setting("device_memory", parse_bytes, help="memory of each server's device, when the peaks come from a profile",
            metavar="SIZE"),
    Setting("max_moves", parse_count, help="most move steps per run (default: no limit)", metavar="N"),
    Setting("cooldown", parse_duration, 600.0, help="a moved model stays put this long (default: 10m)",
            metavar="DURATION"),
    Setting("step_timeout", parse_duration, 60.0, help="per-step limit before rollback (default: 60s)",
            metavar="DURATION"),
    Setting("drain", parse_duration, 5.0, help="keep both copies this long before unloading the source (default: 5s)",
            metavar="DURATION"),
    Setting("state_dir", str, default_state_dir(), help="lock, cooldowns and audit log (default: ~/.local/state/gpupack)",
            metavar="DIR"),
    LOCK_SETTING,
)
# The settings of acting safely, the same for `gpupack rebalance` and `gpupack rules run`.
SAFETY_KEYS = ("device_memory", "max_moves", "cooldown", "step_timeout", "drain", "state_dir", "lock")


def add_safety_flags(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """One flag per safety setting, from its one declaration; ``suppress`` keeps a flag given
    before a subcommand from being reset by the subparser's default."""
    for setting in SETTINGS:
        if setting.key in SAFETY_KEYS:
            parser.add_argument(f"--{setting.key.replace('_', '-')}", metavar=setting.metavar,
                                default=argparse.SUPPRESS if suppress else None,
                                help=f"{setting.help} (env: {setting.env_name('rebalance')})")
