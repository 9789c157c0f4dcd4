"""Route clients to the models wherever gpupack moves them, through HAProxy.

'gpupack router config' writes HAProxy's configuration for the servers of the config file's rules
section (the ones the rules engine and 'gpupack rebalance' move models on): one frontend routing
Triton's HTTP path /v2/models/<model>/... to one backend per model, every (model, server) pair
declared and in maintenance unless the model is ready there now, health checks on
/v2/models/<model>/ready, and requests without a model path sent to any live server. Each answer
carries the header X-Gpupack-Server naming the server that answered. Where clients connect and
where gpupack drives HAProxy come from the config file's router section (listen, admin_socket).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from gpupack.config import ConfigFile, split_list
from gpupack.errors import ExitStatus, InputError, UnreachableError
from gpupack.router.haproxy_config import render_config
from gpupack.router.settings import router_settings
from gpupack.rules import cli as rules_cli
from gpupack.servers import ServerConfig, load_servers, model_control_servers
from gpupack.triton.control import TritonControl, TritonControlError
from gpupack.units import counted


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = parser.add_subparsers(dest="router_command", metavar="ACTION")
    config = commands.add_parser(
        "config", help="write the HAProxy configuration for the config file's servers and today's placement",
        description="Write the HAProxy configuration for the servers of the config file's rules section, with "
                    "each model serving where it is ready now. Every server must answer (exit 3 otherwise). "
                    "Clients connect at the router section's listen (default 0.0.0.0:8080); gpupack drives "
                    "HAProxy at its admin_socket (default /run/haproxy/admin.sock).")
    config.add_argument("--models", metavar="A,B",
                        help="the models to route (default: every model in any server's repository)")
    config.add_argument("--output", metavar="PATH", help="write the configuration here (default: stdout)")


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    if args.router_command != "config":
        raise InputError("give an action: config (see 'gpupack router --help')")
    settings = router_settings(config)
    servers = model_control_servers(load_servers(config, os.environ, {}, rules_cli.SECTION))
    if not servers:
        raise InputError("no servers to route: list them under the config file's rules section (rules: servers:), "
                         "as 'gpupack rules run' and 'gpupack rebalance' read them")
    wanted = split_list(args.models) if args.models is not None else None
    if wanted == ():
        raise InputError("--models: give at least one model name")
    indexes = {server.name: _index(server) for server in servers}
    if wanted is not None:
        models = list(dict.fromkeys(wanted))
    else:
        models = sorted({model for index in indexes.values() for model in index})
    placed = {(model, name) for name, index in indexes.items() for model, state in index.items()
              if state == "READY" and model in models}
    text = render_config(servers, models, placed, listen=settings.listen, admin_socket=settings.admin_socket) + "\n"
    if args.output:
        _write(Path(args.output), text)
    else:
        sys.stdout.write(text)
    print(f"router config: {counted(len(models), 'model')} on {counted(len(servers), 'server')}, "
          f"{counted(len(placed), 'copy')} serving; clients connect at {settings.listen}, gpupack drives "
          f"HAProxy at {settings.admin_socket}" + (f"; wrote {args.output}" if args.output else ""),
          file=sys.stderr)
    return ExitStatus.OK


def _index(server: ServerConfig) -> dict[str, str]:
    try:
        return TritonControl(server, server.timeout_seconds).repository_index()
    except TritonControlError as e:
        if not e.answered:
            raise UnreachableError(f"Triton server {server.name}", server.url, e.__cause__ or e.reason) from e
        raise


def _write(path: Path, text: str) -> None:
    """Whole or not at all: HAProxy reloading meanwhile never reads half a file."""
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
            try:
                file.write(text)
                file.close()
                os.replace(file.name, path)
            except OSError:
                os.unlink(file.name)
                raise
    except OSError as e:
        raise InputError(f"--output: cannot write {path}: {e.strerror or e}") from e

