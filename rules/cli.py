"""`gpupack rules`: check, evaluate and export capacity policies, or judge them continuously.

  gpupack rules check FILE                       validate a policy file or directory
  gpupack rules evaluate --once [--format json]  one evaluation; exit 1 when something is violated
  gpupack rules export-prometheus FILE           Prometheus alerting rules + promtool unit tests
  gpupack rules run --policies FILE              evaluate every interval, serve /metrics
                                                 (also: gpupack rules --policies FILE)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gpupack.config import ConfigFile, Setting, resolve_settings
from gpupack.errors import ExitStatus, InputError
from gpupack.rules.evaluator import evaluate
from gpupack.rules.loader import load_policies
from gpupack.rules.loop import PolicyFile, RulesEngine
from gpupack.rules.peaks_source import SOURCES, build_source
from gpupack.rules.prometheus_export import build_export, write_export
from gpupack.rules.report import write_json, write_table
from gpupack.units import parse_duration

SECTION = "rules"
DEFAULT_LISTEN = "0.0.0.0:9479"


def _source(value: Any) -> str:
    if value not in SOURCES:
        raise ValueError(f"unknown source {value!r} (known: {', '.join(SOURCES)})")
    return str(value)


def _listen(value: Any) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. {DEFAULT_LISTEN})")
    return host.strip("[]") or "0.0.0.0", int(port)


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than 0s")
    return seconds


SETTINGS = (
    Setting("policies", str, help="policy file or directory of *.yaml"),
    Setting("source", _source, "exporter", f"where peaks come from: {', '.join(SOURCES)} (default: exporter)"),
    Setting("exporter_url", str, "http://127.0.0.1:9478", "the exporter (default: http://127.0.0.1:9478)"),
    Setting("prometheus_url", str, help="Prometheus server, with --source prometheus"),
    Setting("window", _positive_duration, 7 * 86400.0, "peak window for --source prometheus (default: 7d)"),
    Setting("profile", str, help="profile file (gpupack profile), with --source profile"),
    Setting("placement", str, help="devices and proposed placement (YAML), with --source profile"),
    Setting("interval", _positive_duration, 30.0, "evaluation interval for 'run' (default: 30s)"),
    Setting("listen", _listen, DEFAULT_LISTEN, f"/metrics address for 'run' (default: {DEFAULT_LISTEN})"),
)


def _add_settings(parser: argparse.ArgumentParser, keys: tuple[str, ...]) -> None:
    for setting in SETTINGS:
        if setting.key in keys:
            # SUPPRESS: a flag given before the subcommand must survive the subparser's defaults.
            parser.add_argument(f"--{setting.key.replace('_', '-')}", default=argparse.SUPPRESS,
                                help=f"{setting.help} (env: {setting.env_name(SECTION)})")


_SOURCE_KEYS = ("policies", "source", "exporter_url", "prometheus_url", "window", "profile", "placement")
_RUN_KEYS = (*_SOURCE_KEYS, "interval", "listen")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _add_settings(parser, _RUN_KEYS)
    commands = parser.add_subparsers(dest="rules_command", metavar="ACTION")
    check = commands.add_parser("check", help="validate a policy file or directory; exit 2 on the first error")
    check.add_argument("file", metavar="FILE")
    once = commands.add_parser("evaluate", help="evaluate the policies once and print every result")
    once.add_argument("--once", action="store_true", required=True, help="evaluate once and exit")
    once.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    _add_settings(once, _SOURCE_KEYS)
    export = commands.add_parser("export-prometheus", help="write the policies as Prometheus alerting rules")
    export.add_argument("file", metavar="FILE", help="alerting rules to write")
    export.add_argument("--tests", metavar="FILE", help="promtool unit tests to write (default: FILE with .test.yaml)")
    _add_settings(export, ("policies",))
    run_parser = commands.add_parser("run", help="evaluate every interval and serve /metrics (the default)")
    _add_settings(run_parser, _RUN_KEYS)


def _settings(args: argparse.Namespace, config: ConfigFile | None) -> dict[str, Any]:
    flags = {s.key: getattr(args, s.key, None) for s in SETTINGS}
    settings = resolve_settings(SECTION, SETTINGS, config, os.environ, flags)
    if not settings["policies"]:
        raise InputError("no policies: give --policies FILE (or GPUPACK_RULES_POLICIES, or rules.policies)")
    return settings


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    command = args.rules_command
    if command == "check":
        policies = load_policies(args.file)
        print(f"{args.file}: {len(policies.policies)} policies OK")
        return ExitStatus.OK
    if command is None and getattr(args, "policies", None) is None and not (config and config.section(SECTION)):
        raise InputError("nothing to do: give an action (check, evaluate, export-prometheus, run) or --policies")
    settings = _settings(args, config)
    if command == "export-prometheus":
        return _export(load_policies(settings["policies"]), Path(args.file), args.tests)
    if command == "evaluate":
        evaluation = evaluate(build_source(settings)(), load_policies(settings["policies"]))
        (write_json if args.format == "json" else write_table)(evaluation, sys.stdout)
        return ExitStatus.FAILURE if evaluation.violations else ExitStatus.OK
    return _run_loop(settings)


def _export(policies: Any, rules_path: Path, tests: str | None) -> int:
    tests_path = Path(tests) if tests else rules_path.with_name(f"{rules_path.stem}.test.yaml")
    export = build_export(policies)
    write_export(export, rules_path, tests_path)
    for name, why in export.skipped:
        print(f"skipped policy {name!r}: {why}", file=sys.stderr)
    print(f"wrote {len(export.rules)} alerting rules to {rules_path} and their tests to {tests_path}")
    return ExitStatus.OK


def _run_loop(settings: dict[str, Any]) -> int:
    policy_file = PolicyFile(settings["policies"])
    engine = RulesEngine(build_source(settings), policy_file.current)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: engine.stop())
    host, port = settings["listen"]
    engine.serve(settings["interval"], host, port)
    return ExitStatus.OK
