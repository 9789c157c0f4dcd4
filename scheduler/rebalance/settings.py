"""The rebalance settings, declared once: `gpupack rebalance` and `gpupack rules run` take the same
flags, ``GPUPACK_REBALANCE_*`` variables and ``rebalance:`` config section, from these declarations,
and turn what they resolve into one :class:`RebalanceSettings` the same way.

Kept apart from the CLI so that `gpupack rules` can add the flags without importing the solver.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gpupack.config import Setting, default_state_dir
from gpupack.errors import InputError
from gpupack.router import Router
from gpupack.router.settings import FLAG_HELP as ROUTER_FLAG_HELP
from gpupack.scheduler.rebalance.lease import KubernetesApi, LeaseLock
from gpupack.scheduler.rebalance.locks import LOCK_FILE_NAME, FileLock, LockFactory
from gpupack.units import parse_bytes, parse_count, parse_duration


@dataclass(frozen=True)
class LockSpec:
    """The ``lock`` setting: ``file:PATH`` or ``lease:NAME``."""

    kind: str
    target: str

    @classmethod
    def parse(cls, value: object) -> "LockSpec":
        kind, _, target = str(value).partition(":")
        if kind == "file" and target:
            return cls(kind, target)
        if kind == "lease" and re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", target):
            return cls(kind, target)
        raise ValueError(f"{value!r} is not file:PATH or lease:NAME (NAME a Kubernetes object name)")


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
    Setting("drain", parse_duration, 5.0, help="without a router, keep both copies this long before unloading the "
            "source (default: 5s)", metavar="DURATION"),
    Setting("state_dir", str, default_state_dir(),
            help="lock, cooldowns, audit log and desired state (default: ~/.local/state/gpupack)", metavar="DIR"),
    Setting("lock", LockSpec.parse, None,
            help="one scheduler at a time: file:PATH (default: rebalance.lock in the state dir) or lease:NAME "
                 "(a Kubernetes Lease; needs POD_NAME, POD_NAMESPACE)", metavar="SPEC"),
)
# The settings of acting safely, the same for `gpupack rebalance` and `gpupack rules run`.
SAFETY_KEYS = ("device_memory", "max_moves", "cooldown", "step_timeout", "drain", "state_dir", "lock")


def add_safety_flags(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """One flag per safety setting, from its one declaration, and the router's; ``suppress`` keeps
    a flag given before a subcommand from being reset by the subparser's default."""
    for setting in SETTINGS:
        if setting.key in SAFETY_KEYS:
            env = f"env: {setting.env_name('rebalance')}"
            help_text = f"{setting.help[:-1]}; {env})" if setting.help.endswith(")") else f"{setting.help} ({env})"
            parser.add_argument(f"--{setting.key.replace('_', '-')}", metavar=setting.metavar,
                                default=argparse.SUPPRESS if suppress else None, help=help_text)
    # Read by gpupack.router.settings alone, with the config file's router section.
    parser.add_argument("--router", metavar="SPEC", default=argparse.SUPPRESS if suppress else None,
                        help=ROUTER_FLAG_HELP)


def lock_factory(spec: LockSpec | None, state_dir: Path, environ: Mapping[str, str]) -> LockFactory:
    """A fresh lock per run; without a spec, the file lock in the state directory.

    A Lease is held by this pod (``POD_NAME``) in its namespace (``POD_NAMESPACE``), both from the
    downward API, and reached with the pod's service account.
    """
    if spec is None:
        return lambda: FileLock(state_dir / LOCK_FILE_NAME)
    if spec.kind == "file":
        return lambda: FileLock(Path(spec.target))
    identity, namespace = environ.get("POD_NAME"), environ.get("POD_NAMESPACE")
    if not identity or not namespace:
        raise InputError(f"lock lease:{spec.target} needs POD_NAME and POD_NAMESPACE (set them from the downward API)")
    api = KubernetesApi.in_cluster(environ)
    return lambda: LeaseLock(spec.target, namespace, identity, api)


@dataclass(frozen=True)
class RebalanceSettings:
    """The rules one rebalancer acts under, typed once so that it never reads the settings dict."""

    state_dir: Path
    max_moves: int | None = None
    cooldown_seconds: float = 600.0
    step_timeout_seconds: float = 60.0
    drain_seconds: float = 5.0
    solve_time_limit_seconds: float = 10.0
    lock: LockFactory | None = None  # one scheduler at a time; default: a file lock in state_dir
    router: Router | None = None  # what sends clients to the copies; None: clients are not redirected


def rebalance_settings(resolved: Mapping[str, Any], environ: Mapping[str, str],
                       router: Router | None = None) -> RebalanceSettings:
    """What the rebalancer needs of the settings ``resolve_settings("rebalance", SETTINGS, ...)``
    resolved; ``environ`` names the pod that holds a Lease lock."""
    state_dir = Path(resolved["state_dir"])
    return RebalanceSettings(
        state_dir=state_dir,
        max_moves=resolved["max_moves"],
        cooldown_seconds=resolved["cooldown"],
        step_timeout_seconds=resolved["step_timeout"],
        drain_seconds=resolved["drain"],
        lock=lock_factory(resolved["lock"], state_dir, environ),
        router=router,
    )
