"""Move models off devices that break policies, with the fewest safe moves.

Reads where every model is from the Triton servers, judges it against the policies with peaks
from the exporter (or a profile file), and prints the plan. Nothing changes without --apply;
then each step loads the model at its target and waits until it answers before unloading it at
its source (with --router, once the router sends it nothing more), one step at a time, under a
lock, a moves-per-run limit and a per-model cooldown. A server that does not answer is left out
of the plan; a policy no placement meets is named and the others are still enforced.
"""

from __future__ import annotations

import argparse
import os
import sys

from gpupack.config import ConfigFile, resolve_settings
from gpupack.errors import ExitStatus, InputError
from gpupack.router.settings import router_from_settings
from gpupack.rules import cli as rules_cli
from gpupack.rules.loader import load_policies_if_given
from gpupack.scheduler.rebalance.inputs import ExporterInputs, ProfileInputs
from gpupack.scheduler.rebalance.report import render_json, render_outcome, render_table
from gpupack.scheduler.rebalance.rebalancer import Rebalancer
from gpupack.scheduler.rebalance.settings import SETTINGS, add_safety_flags, rebalance_settings
from gpupack.scheduler.rebalance.verify_gate import verify_plan_targets
from gpupack.servers import load_servers, model_control_servers
from gpupack.verification import Verifier


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", action="append", metavar="NAME=URL",
                        help="a Triton server to manage (repeat), e.g. triton-0=http://10.0.0.5:8000 (default: the "
                             "servers of the config file's rules section, as 'gpupack rules run' manages them)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--exporter", metavar="URL", help="take peaks, devices and baselines from this exporter "
                        "(default: the config file's rules exporter_url)")
    source.add_argument("--profile", metavar="FILE", help="take peaks from a profile file (needs --device-memory)")
    parser.add_argument("--policies", metavar="FILE", help="policies to enforce (default: the config file's rules "
                        "policies, else device capacity only)")
    parser.add_argument("--apply", action="store_true", help="carry out the plan (default: only print it)")
    add_safety_flags(parser)
    parser.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")


def run(args: argparse.Namespace, config: ConfigFile | None, verifier: Verifier | None = None) -> int:
    """``verifier``: replay each target device on a canary before any move (``--verify-on``, wired in
    ``gpupack.app.rebalance_verify``, the layer that knows the profiler)."""
    settings = resolve_settings("rebalance", SETTINGS, config, os.environ, vars(args))
    # The servers, exporter and policies of the rules engine, which runs this same scheduler.
    servers = model_control_servers(load_servers(config, os.environ, {"servers": args.server}, rules_cli.SECTION))
    if not servers:
        raise InputError("give the servers to manage: --server NAME=URL (repeat), or a servers list in the config "
                         "file's rules section")
    rules = resolve_settings(rules_cli.SECTION, rules_cli.SETTINGS, config, os.environ, {})
    if settings["exporter"] is None and "exporter_url" in ((config and config.section(rules_cli.SECTION)) or {}):
        settings["exporter"] = rules["exporter_url"]
    if settings["policies"] is None:
        settings["policies"] = rules["policies"]
    if args.profile:
        if settings["device_memory"] is None:
            raise InputError("--profile needs --device-memory (the memory of each server's device)")
        inputs: ProfileInputs | ExporterInputs = ProfileInputs(args.profile, servers, settings["device_memory"])
    elif settings["exporter"]:
        inputs = ExporterInputs(settings["exporter"])
    else:
        raise InputError("give --exporter URL (peaks as recorded) or --profile FILE (peaks as profiled)")
    rebalancer = Rebalancer(
        servers,
        inputs,
        load_policies_if_given(settings["policies"]),
        rebalance_settings(settings, os.environ, router_from_settings(config, args.router)),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    plan = rebalancer.plan()
    if args.format == "table":
        sys.stdout.write(render_table(plan, rebalancer.policies, applying=args.apply))
        sys.stdout.flush()
    if verifier is not None:
        gate = verify_plan_targets(plan, verifier)
        print("\n".join(gate.lines(args.verify_on)), file=sys.stderr, flush=True)
        if not gate.passed:
            if args.format == "json":
                sys.stdout.write(render_json(plan, None))
            return ExitStatus.FAILURE
    outcome = rebalancer.apply(plan) if args.apply and plan.admission.admitted else None
    if args.format == "json":
        sys.stdout.write(render_json(plan, outcome))
    elif outcome is not None:
        sys.stdout.write(render_outcome(outcome))
    if outcome is not None:
        return ExitStatus.OK if outcome.succeeded else ExitStatus.FAILURE
    return ExitStatus.OK if plan.moves.safe and not plan.unsatisfiable else ExitStatus.FAILURE
