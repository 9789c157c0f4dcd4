"""The ``gpupack`` command. The only place that turns errors into exit codes and one-line messages."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import NoReturn, Sequence

from gpupack import __version__
from gpupack.config import ConfigFile, load_config_file
from gpupack.errors import ExitStatus, GpupackError

# Subcommand -> module defining ``configure(parser)`` and ``run(args, config) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "exporter": ("gpupack.exporter.cli", "run the exporter daemon: per-model GPU memory/utilisation, peaks, /metrics"),
    "rules": ("gpupack.app.rules_command", "check, evaluate and export capacity policies"),
    "plan": ("gpupack.app.plan_verify", "compute the best placement of models on devices"),
    "rebalance": ("gpupack.app.rebalance_verify", "move models to the planned placement, safely"),
    "profile": ("gpupack.profiler.cli", "measure models' requirements across batch sizes and concurrency"),
    "verify": ("gpupack.app.verify_command", "replay each device of a plan on a scratch server and judge it"),
    "demo": ("gpupack.app.demo", "run a demo fleet of real Triton servers on this machine (no GPU needed)"),
    "router": ("gpupack.app.router_command", "route clients to the models wherever they move (HAProxy)"),
}


EXIT_STATUS_HELP = (
    "exit status: 0 ok; 1 the answer is no (a violation, an infeasible plan, a failed check or "
    "step); 2 bad input or usage, nothing changed; 3 a dependency (exporter, Prometheus, Triton, "
    "Alertmanager) could not be reached."
)


class _Parser(argparse.ArgumentParser):
    """Every command and subcommand: usage errors are exit 2, and every --help ends with the
    exit-status contract."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("epilog", EXIT_STATUS_HELP)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(ExitStatus.USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


_GLOBAL_OPTIONS_WITH_VALUE = ("--config", "--log-level")


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, found without importing any of them."""
    skip_next = False
    for token in argv:
        if skip_next:
            skip_next = False
        elif token in _GLOBAL_OPTIONS_WITH_VALUE:
            skip_next = True
        elif not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def build_parser(only: str | None = None, *, all_commands: bool = True) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just that subcommand's module is imported and configured.

    Subcommands pull in OR-Tools, matplotlib, tritonclient...: ``gpupack --help`` and each command
    should pay only for what they use.
    """
    parser = _Parser(
        prog="gpupack",
        description="What each model on a Triton fleet costs on its GPU, and where it should run.",
    )
    parser.add_argument("--version", action="version", version=f"gpupack {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("GPUPACK_CONFIG"),
        help="YAML configuration file (env: GPUPACK_CONFIG); flags and GPUPACK_* variables override it",
    )
    parser.add_argument("--log-level", default=os.environ.get("GPUPACK_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="log verbosity (default: info)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == only or (only is None and all_commands):
            module = importlib.import_module(module_name)
            sub.description = (module.__doc__ or help_text).strip()
            module.configure(sub)
            sub.set_defaults(_module=module)
    return parser


# Libraries that log at INFO or WARNING about themselves (matplotlib's font cache, urllib3's
# retries): their lines are not gpupack's output, and show only at --log-level debug.
_QUIET_LIBRARIES = ("matplotlib", "urllib3", "PIL", "kubernetes", "fontTools")


def _configure_logging(level: str) -> None:
    """Every log line on stderr, in one format; stdout is the command's answer only."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level != "debug":
        for name in _QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    parser = build_parser(command, all_commands=False)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitStatus.USAGE
    _configure_logging(args.log_level)
    try:
        config: ConfigFile | None = load_config_file(args.config) if args.config else None
        status = int(args._module.run(args, config))
        sys.stdout.flush()  # here, so that a reader gone away is seen below, not at exit
        return status
    except BrokenPipeError:
        # `gpupack ... | head`: the reader has what it wanted. Python would report the unflushed
        # rest at exit; point stdout at /dev/null so that nothing is left to fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command stopped by a closed pipe
    except GpupackError as e:
        print(f"gpupack {args.command}: error: {e}", file=sys.stderr)
        return int(e.exit_status)
    except KeyboardInterrupt:
        print(f"gpupack {args.command}: interrupted", file=sys.stderr)
        return 130
