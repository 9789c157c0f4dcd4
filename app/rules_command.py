"""`gpupack rules`: the rules engine's command, with the scheduler wired in for ``run --server``.

The command itself is ``gpupack.rules.cli``; this adds the scheduler's safety flags (declared once,
in ``gpupack.scheduler.rebalance.settings``) and builds what acts on ``rebalance`` policies.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from typing import Any, Callable

from gpupack.config import ConfigFile, resolve_settings
from gpupack.errors import InputError
from gpupack.router.settings import router_from_settings
from gpupack.rules import cli as rules_cli
from gpupack.rules.loop import Acting
from gpupack.rules.policy import PolicySet
from gpupack.servers import load_servers, model_control_servers

__doc__ = rules_cli.__doc__  # `gpupack rules --help` describes the command, not this wiring

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    from gpupack.scheduler.rebalance.settings import add_safety_flags  # noqa: PLC0415

    rules_cli.configure(parser, add_acting_flags=functools.partial(add_safety_flags, suppress=True))


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    return rules_cli.run(args, config, acting=build_acting)


def build_acting(settings: dict[str, Any], args: argparse.Namespace, config: ConfigFile | None,
                 policies: Callable[[], PolicySet]) -> Acting | None:
    """The in-process scheduler for ``rebalance`` policies, or None without servers to manage."""
    from gpupack.closedloop.trigger import RebalanceTrigger  # noqa: PLC0415 - the scheduler, only for 'run'
    from gpupack.rules.demand_source import observed_demand  # noqa: PLC0415
    from gpupack.scheduler.rebalance.inputs import (  # noqa: PLC0415
        DemandInputs, ExporterInputs, FleetInputs, ProfileInputs, PrometheusInputs,
    )
    from gpupack.scheduler.rebalance.metrics import make_wsgi_app as scheduler_app  # noqa: PLC0415
    from gpupack.scheduler.rebalance.rebalancer import Rebalancer  # noqa: PLC0415
    from gpupack.scheduler.rebalance.settings import SETTINGS, rebalance_settings  # noqa: PLC0415

    endpoints = model_control_servers(load_servers(config, os.environ, {"servers": getattr(args, "servers", None)},
                                                 section=rules_cli.SECTION))
    if not endpoints:
        if settings["schedule"]:
            raise InputError("--schedule needs Triton servers whose models it may move: give --server NAME=URL "
                             "(servers in explicit model control mode), or servers: in the rules section")
        return None
    rebalance = resolve_settings("rebalance", SETTINGS, config, os.environ, vars(args))
    inputs: Callable[[], FleetInputs]
    if settings["source"] == "exporter":
        inputs = ExporterInputs(settings["exporter_url"])
    elif settings["source"] == "prometheus":
        inputs = PrometheusInputs(settings["prometheus_url"], settings["window"])
    else:
        if rebalance["device_memory"] is None:
            raise InputError("--source profile with servers needs --device-memory (the memory of each server's device)")
        inputs = ProfileInputs(settings["profile"], endpoints, rebalance["device_memory"])
    demand = observed_demand(settings)
    if demand is not None:
        inputs = DemandInputs(inputs, demand)
    router = router_from_settings(config, getattr(args, "router", None))
    rebalancer = Rebalancer(endpoints, inputs, policies(), rebalance_settings(rebalance, os.environ, router),
                            progress=lambda line: log.info("rebalance: %s", line))
    trigger = RebalanceTrigger(rebalancer, policies, apply=settings["apply"])
    acting = Acting(trigger, rebalancer.refresh_placement, functools.partial(scheduler_app, rebalancer.state),
                    rebalancer.loaded_copy_capacities)
    if not settings["schedule"]:
        return acting
    from gpupack.closedloop.follower import ScheduleFollower, following  # noqa: PLC0415
    from gpupack.closedloop.schedule_file import load_schedule  # noqa: PLC0415

    follower = ScheduleFollower(load_schedule(settings["schedule"]), rebalancer, policies, settings["lead"],
                                settings["apply"])
    return following(acting, follower)
