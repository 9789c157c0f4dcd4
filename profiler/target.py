"""Which Triton server a profile run measures on, checked before anything starts.

The server is ``--server`` (a URL, or the name of a server the config file lists), else one
started over ``--model-repository``, else the one server the config file lists. Every model to
profile must be in the repository, and a server given to us must have no other model loaded
unless ``--shared-server`` says to measure beside them: all of this is bad input (exit 2), found
by reading the repository or the server's index, before a server is started or a model loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gpupack.config import ConfigFile
from gpupack.errors import InputError, UnreachableError
from gpupack.servers import ServerConfig, load_servers
from gpupack.triton.control import TritonControl, TritonControlError
from gpupack.units import counted

# The config sections whose server lists name the fleet, in the order they are read: a file made
# for the exporter or the rules engine (the demo's, say) names the servers `profile` may use.
SERVER_SECTIONS = ("profile", "exporter", "rules")
_INDEX_TIMEOUT_SECONDS = 10.0
_LISTED_AT_MOST = 10  # names of the models a repository has, in an error about one it lacks


@dataclass(frozen=True)
class Target:
    """A server to measure on (``server``), or a repository to start one over (``repository``)."""

    server: ServerConfig | None = None
    repository: Path | None = None
    # Models that were loaded before the run (--shared-server): left alone, never measured.
    shared_with: frozenset[str] = frozenset()


def resolve_target(values: Mapping[str, Any], config: ConfigFile | None, shared: bool) -> Target:
    """The server the settings name, its models checked; raises InputError or UnreachableError."""
    models = values["models"]
    server = _named_server(values["server"], config) if values["server"] else None
    if server is None and values["model_repository"]:
        repository = Path(values["model_repository"])
        if not repository.is_dir():
            raise InputError("is not a directory", field=f"--model-repository {repository}")
        if shared:
            raise InputError("--shared-server measures beside the models of a running server: give --server too")
        _require_known(models, {p.name for p in repository.iterdir() if p.is_dir()}, f"the repository {repository}")
        return Target(repository=repository)
    if server is None:
        server = _the_configured_server(config)
    return Target(server=server, shared_with=_check_server(server, models, shared))


def _named_server(value: str, config: ConfigFile | None) -> ServerConfig:
    for server in _configured_servers(config):
        if server.name == value:
            return server
    return ServerConfig(name="profiled", url=value if "//" in value else f"http://{value}")


def _configured_servers(config: ConfigFile | None) -> tuple[ServerConfig, ...]:
    for section in SERVER_SECTIONS:
        servers = load_servers(config, os.environ if section == "profile" else {}, {}, section)
        if servers:
            return servers
    return ()


def _the_configured_server(config: ConfigFile | None) -> ServerConfig:
    servers = _configured_servers(config)
    if len(servers) == 1:
        return servers[0]
    if servers:
        raise InputError(f"the config file lists {len(servers)} servers ({', '.join(s.name for s in servers)}): "
                         "name the one to measure on with --server NAME")
    raise InputError("give --server URL, or --model-repository DIR to start a server over, "
                     "or --config FILE listing the server")


def _check_server(server: ServerConfig, models: tuple[str, ...], shared: bool) -> frozenset[str]:
    """The models already loaded there (left alone), once the server is known to suit the run."""
    try:
        index = TritonControl(server, _INDEX_TIMEOUT_SECONDS).repository_index()
    except TritonControlError as e:
        if e.answered:
            raise InputError(f"server {server.url} refused to list its repository: {e.reason} "
                             "(the profiler needs --model-control-mode=explicit)") from e
        raise UnreachableError("the Triton server", server.url, e) from e
    _require_known(models, set(index), f"the repository of {server.url}")
    loaded = sorted(name for name, state in index.items() if state == "READY")
    mine = [m for m in models if m in loaded]
    if mine:
        raise InputError(f"{', '.join(mine)} already loaded on {server.url}: the profiler loads and unloads each "
                         "model it measures, and would take it away from its users; profile it on another server")
    if loaded and not shared:
        raise InputError(f"server {server.url} already has {', '.join(loaded)} loaded, which would count in "
                         "every number: profile on a server with no model loaded, or give --shared-server to "
                         "measure beside them, leaving them alone (see docs/profiler.md)")
    return frozenset(loaded)


def _require_known(models: tuple[str, ...], known: set[str], where: str) -> None:
    unknown = [m for m in models if m not in known]
    if unknown:
        names = sorted(known)
        listed = ", ".join(names[:_LISTED_AT_MOST]) + (f" and {len(names) - _LISTED_AT_MOST} more"
                                                     if len(names) > _LISTED_AT_MOST else "")
        raise InputError(f"no model {', '.join(unknown)} in {where} (it has {counted(len(names), 'model')}"
                         f"{': ' + listed if names else ''})", field="--models")
