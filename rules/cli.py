"""Check, evaluate and export capacity policies, or judge them continuously.

  gpupack rules check FILE                 validate a policy file or a directory of them
  gpupack rules evaluate --policies FILE   evaluate once: a table (or --format json)
  gpupack rules export-prometheus FILE --policies FILE
                                           write Prometheus alerting rules and promtool tests
  gpupack rules run --policies FILE        evaluate every interval and serve /metrics
                                           (also: gpupack rules --policies FILE)

'evaluate' exits 1 when a policy is violated. A policy whose selector matches nothing (no device,
no loaded model) is shown as "no match": it is not a violation.

With Triton servers (--server NAME=URL, or servers: in the rules section of --config), 'run' hands
violations of "action: rebalance" policies to the scheduler, which plans from the same peaks: it
logs the plan (--dry-run, the default) or carries it out (--apply), under the scheduler's lock,
limits and cooldowns (the rebalance section of --config, shared with 'gpupack rebalance'), and
serves /api/v1/placement beside /metrics. A request that is skipped, fails or leaves moves
deferred is asked again later.

With --schedule FILE (a schedule from 'gpupack plan --demand-series FILE --schedule --format json'
whose series has a start), 'run' also follows it: each step's placement is carried out --lead
(default 10m) before the step begins, its moves planned from the placement live then; a step that
live demand would break is re-planned under the policies, which keep guarding throughout.
"""

# The docstring above is `gpupack rules --help`. This module knows nothing of the scheduler:
# gpupack.app.rules_command adds its flags and hands run() an ``acting`` factory.

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from prometheus_client import make_wsgi_app

from gpupack.config import ConfigFile, Setting, parse_listen, resolve_settings
from gpupack.errors import ExitStatus, InputError
from gpupack.rules.demand_source import with_demand, with_loaded_capacities
from gpupack.rules.evaluator import evaluate
from gpupack.rules.loader import load_policies
from gpupack.rules.loop import Acting, PolicyFile, RulesEngine
from gpupack.rules.peaks_source import SOURCES, build_source
from gpupack.rules.prometheus_export import build_export, write_export
from gpupack.rules.report import write_json, write_table
from gpupack.rules.transitions import ViolationTracker
from gpupack.units import counted, parse_duration

log = logging.getLogger(__name__)

SECTION = "rules"
DEFAULT_PORT = 9479


def _source(value: Any) -> str:
    if value not in SOURCES:
        raise ValueError(f"unknown source {value!r} (known: {', '.join(SOURCES)})")
    return str(value)


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than 0s")
    return seconds


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{value!r} is not true or false")
    return text in ("true", "1", "yes")


SETTINGS = (
    Setting("policies", str, help="policy file, or a directory of *.yaml policy files", metavar="FILE"),
    Setting("source", _source, "exporter", "where peaks come from (default: exporter)", metavar="|".join(SOURCES)),
    Setting("exporter_url", str, "http://127.0.0.1:9478", "the exporter (default: http://127.0.0.1:9478)",
            metavar="URL"),
    Setting("prometheus_url", str, help="Prometheus scraping the exporters, with --source prometheus",
            metavar="URL"),
    Setting("window", _positive_duration, 7 * 86400.0, "peak window for --source prometheus (default: 7d)",
            metavar="DURATION"),
    Setting("profile", str, help="a profile written by 'gpupack profile': the peaks, with --source profile; "
            "with --demand-from-prometheus, what one copy of each model serves", metavar="FILE"),
    Setting("demand_from_prometheus", str, help="Prometheus scraping Triton's metrics: each model's demand, "
            "for throughput policies", metavar="URL"),
    Setting("demand_window", _positive_duration, 3600.0,
            "demand is the peak request rate over this window (default: 1h)", metavar="DURATION"),
    Setting("placement", str, help="devices and proposed placement (YAML), with --source profile", metavar="FILE"),
    Setting("interval", _positive_duration, 30.0, "evaluation interval for 'run' (default: 30s)",
            metavar="DURATION"),
    Setting("listen", lambda v: parse_listen(v, DEFAULT_PORT), ("0.0.0.0", DEFAULT_PORT),
            f"/metrics address for 'run' (default: 0.0.0.0:{DEFAULT_PORT})", metavar="HOST:PORT"),
    # Parsed by the exporter's server list parser (load_servers); here for the file's known keys.
    Setting("servers", lambda value: value, help="Triton servers the scheduler manages, with 'run'"),
    Setting("apply", _boolean, False, "carry out rebalance plans (default: log them only)"),
    Setting("schedule", str, help="a schedule to follow (gpupack plan --demand-series FILE --schedule --format json, "
            "with a start), with servers", metavar="FILE"),
    Setting("lead", parse_duration, 600.0,
            "carry out each step of --schedule this long before it begins (default: 10m)", metavar="DURATION"),
)


def _add_settings(parser: argparse.ArgumentParser, keys: tuple[str, ...]) -> None:
    for setting in SETTINGS:
        if setting.key in keys:
            # SUPPRESS: a flag given before the subcommand must survive the subparser's defaults.
            env = f"env: {setting.env_name(SECTION)}"
            help_text = f"{setting.help[:-1]}; {env})" if setting.help.endswith(")") else f"{setting.help} ({env})"
            parser.add_argument(f"--{setting.key.replace('_', '-')}", default=argparse.SUPPRESS,
                                metavar=setting.metavar, help=help_text)


_SOURCE_KEYS = ("policies", "source", "exporter_url", "prometheus_url", "window", "profile", "placement",
                "demand_from_prometheus", "demand_window")
_RUN_KEYS = (*_SOURCE_KEYS, "interval", "listen", "schedule", "lead")
# What acts on rebalance policies, given the resolved settings, the flags, the config file and
# the current policies: None when there is nothing to manage.
ActingFactory = Callable[[dict[str, Any], argparse.Namespace, "ConfigFile | None", Callable[[], Any]], "Acting | None"]


def _add_run_settings(parser: argparse.ArgumentParser, add_acting_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """The loop's settings, and what it needs to act on ``rebalance`` policies."""
    _add_settings(parser, _RUN_KEYS)
    parser.add_argument("--server", dest="servers", action="append", default=argparse.SUPPRESS, metavar="NAME=URL",
                        help="a Triton server the scheduler manages (repeat; env: GPUPACK_RULES_SERVERS, comma-"
                             "separated); without any, rebalance requests are only logged")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--apply", dest="apply", action="store_const", const=True, default=argparse.SUPPRESS,
                      help="carry out rebalance plans (env: GPUPACK_RULES_APPLY)")
    mode.add_argument("--dry-run", dest="apply", action="store_const", const=False, default=argparse.SUPPRESS,
                      help="log rebalance plans, change nothing (the default)")
    add_acting_flags(parser)


def configure(parser: argparse.ArgumentParser,
              add_acting_flags: Callable[[argparse.ArgumentParser], None] = lambda parser: None) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _add_run_settings(parser, add_acting_flags)
    commands = parser.add_subparsers(dest="rules_command", metavar="ACTION")
    check = _action(commands, "check", "validate a policy file or directory; exit 2 on the first error",
                    "Validate a policy file, or every *.yaml file of a directory; nothing is evaluated. An error "
                    "is one line naming the file, line and field, and exit 2.")
    check.add_argument("file", metavar="FILE", help="policy file, or a directory of *.yaml policy files")
    once = _action(commands, "evaluate", "evaluate the policies once and print every result",
                   "Evaluate the policies once and print every result; exit 1 when a policy is violated. A "
                   "policy whose selector matches nothing is shown as \"no match\", with its selector: it is "
                   "not a violation.")
    once.add_argument("--once", action="store_true", help="evaluate once (what evaluate always does; may be left out)")
    once.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    _add_settings(once, _SOURCE_KEYS)
    export = _action(commands, "export-prometheus", "write the policies as Prometheus alerting rules",
                     "Write one Prometheus alert per policy over the exporter's series, and a promtool unit "
                     "test for each.")
    export.add_argument("file", metavar="FILE", help="alerting rules to write")
    export.add_argument("--tests", metavar="FILE", help="promtool unit tests to write (default: FILE with .test.yaml)")
    _add_settings(export, ("policies",))
    run_parser = _action(commands, "run", "evaluate every interval and serve /metrics (the default)",
                         "Evaluate every interval and serve /metrics; with --server, act on \"action: "
                         "rebalance\" policies.")
    _add_run_settings(run_parser, add_acting_flags)


def _action(commands: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text, description=description)
    return parser


def _settings(args: argparse.Namespace, config: ConfigFile | None) -> dict[str, Any]:
    flags = {s.key: getattr(args, s.key, None) for s in SETTINGS}
    settings = resolve_settings(SECTION, SETTINGS, config, os.environ, flags)
    if not settings["policies"]:
        raise InputError("no policies: give --policies FILE (or GPUPACK_RULES_POLICIES, or rules.policies)")
    return settings


def run(args: argparse.Namespace, config: ConfigFile | None, acting: ActingFactory | None = None) -> int:
    command = args.rules_command
    if command == "check":
        policies = load_policies(args.file)
        print(f"{args.file}: {counted(len(policies.policies), 'policy')} OK")
        return ExitStatus.OK
    if command is None and getattr(args, "policies", None) is None and not (config and config.section(SECTION)):
        raise InputError("nothing to do: give an action (check, evaluate, export-prometheus, run) or --policies")
    settings = _settings(args, config)
    if command == "export-prometheus":
        return _export(load_policies(settings["policies"]), Path(args.file), args.tests)
    if command == "evaluate":
        evaluation = evaluate(with_demand(build_source(settings), settings)(), load_policies(settings["policies"]))
        (write_json if args.format == "json" else write_table)(evaluation, sys.stdout)
        return ExitStatus.FAILURE if evaluation.violations else ExitStatus.OK
    return _run_loop(settings, args, config, acting)


def _export(policies: Any, rules_path: Path, tests: str | None) -> int:
    tests_path = Path(tests) if tests else rules_path.with_name(f"{rules_path.stem}.test.yaml")
    export = build_export(policies)
    write_export(export, rules_path, tests_path)
    for name, why in export.skipped:
        print(f"skipped policy {name!r}: {why}", file=sys.stderr)
    print(f"wrote {counted(len(export.rules), 'alerting rule')} to {rules_path} and their tests to {tests_path}")
    return ExitStatus.OK


def _run_loop(settings: dict[str, Any], args: argparse.Namespace, config: ConfigFile | None,
              acting: ActingFactory | None) -> int:
    policy_file = PolicyFile(settings["policies"])
    source = with_demand(build_source(settings), settings)  # its settings are checked before the scheduler's
    actor = acting(settings, args, config, policy_file.current) if acting is not None else None
    if actor is None:
        engine = RulesEngine(source, policy_file.current)
        app: Callable[..., Any] = make_wsgi_app  # the rules metrics alone
    else:
        engine = RulesEngine(with_loaded_capacities(source, actor.copy_capacity_per_second), policy_file.current,
                             tracker=ViolationTracker(actor.request_rebalance),
                             refresh_placement=actor.refresh_placement)
        app = actor.app
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: engine.stop())
    host, port = settings["listen"]
    engine.serve(settings["interval"], host, port, app)
    return ExitStatus.OK
