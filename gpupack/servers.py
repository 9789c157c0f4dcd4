"""The Triton servers gpupack talks to: one type for an endpoint, read once from flags, the
environment or the config file, for every subcommand that names servers.

The exporter watches them, the rules engine and ``gpupack rebalance`` move models on them, the
profiler measures on one: all through :class:`ServerConfig`, so TLS, headers and model filters
mean the same everywhere. List errors name the item and line inside the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Mapping

from gpupack.addresses import host_and_port
from gpupack.config import ConfigFile, Setting, split_list
from gpupack.errors import InputError
from gpupack.units import UnitError, parse_bytes, parse_duration
from gpupack.yamlfile import LineDict, LineList

PROTOCOLS = ("http", "grpc")
SERVERS_SETTING = Setting("servers", lambda v: v, None, "Triton servers to watch")


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class ModelFilter:
    """Which of a server's models get Prometheus series (globs; an empty allowlist allows all).

    Only the exposition is filtered: attribution, peaks and /api/v1/peaks still cover every model,
    so a denied model's memory is neither lost nor counted as the server's own.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def exports(self, model: str) -> bool:
        if self.allow and not any(fnmatchcase(model, pattern) for pattern in self.allow):
            return False
        return not any(fnmatchcase(model, pattern) for pattern in self.deny)


@dataclass(frozen=True)
class ServerConfig:
    """One Triton server to watch. ``url`` is ``http(s)://host:port`` for HTTP, ``host:port`` for gRPC."""

    name: str
    url: str
    protocol: str = "http"
    metrics_url: str | None = None
    pid: int | None = None
    memory_budget_bytes: int | None = None
    timeout_seconds: float = 2.0
    tls: TlsConfig | None = None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)  # hashable: a server can key a set
    models: ModelFilter = ModelFilter()

    @property
    def port(self) -> int | None:
        return host_and_port(self.url)[1]


def load_servers(config: ConfigFile | None, environ: Mapping[str, str], flags: Mapping[str, Any],
                 section: str) -> tuple[ServerConfig, ...]:
    """The server list of ``section`` (the rules engine and ``gpupack rebalance`` read theirs the
    same way), whole from the first layer that has one: flags (``servers``, a list of NAME=URL),
    else ``GPUPACK_<SECTION>_SERVERS``, else the config file's list."""
    env_name = SERVERS_SETTING.env_name(section)
    if flags.get("servers"):
        return _unique(tuple(_server_from_pair(text, "--server") for text in flags["servers"]), "--server")
    if env_name in environ:
        pairs = split_list(environ[env_name])
        return _unique(tuple(_server_from_pair(text, env_name) for text in pairs), env_name)
    values = config.section(section) if config else None
    if not values or "servers" not in values:
        return ()
    items = values["servers"]
    path = config.path  # type: ignore[union-attr]
    if not isinstance(items, LineList):
        raise InputError("must be a list of servers", path=path, line=values.line_of("servers"), field=f"{section}.servers")
    servers = []
    for index, (item, line) in enumerate(zip(items, items.item_lines)):
        where = f"{section}.servers[{index}]"
        if not isinstance(item, LineDict):
            raise InputError("must be a mapping with name and url", path=path, line=line, field=where)
        servers.append(_server_from_mapping(item, path, where))
    return _unique(tuple(servers), f"{path}: {section}.servers")


def _server_from_pair(text: str, origin: str) -> ServerConfig:
    name, sep, url = str(text).partition("=")
    if not sep or not name.strip() or not url.strip():
        raise InputError(f"{origin}: {text!r} is not NAME=URL")
    try:
        return ServerConfig(name=name.strip(), url=_url(url.strip(), "http"))
    except ValueError as e:
        raise InputError(f"{origin}: {name.strip()}: {e}") from e


_SERVER_KEYS = ("name", "url", "protocol", "metrics_url", "pid", "memory_budget", "timeout", "tls", "headers", "models")


def _server_from_mapping(item: LineDict, path: str, where: str) -> ServerConfig:
    def fail(key: str, message: str) -> InputError:
        return InputError(message, path=path, line=item.line_of(key), field=f"{where}.{key}")

    for key in item:
        if key not in _SERVER_KEYS:
            raise fail(key, f"unknown key (known: {', '.join(_SERVER_KEYS)})")
    for key in ("name", "url"):
        if not item.get(key):
            raise InputError("is required", path=path, line=item.line, field=f"{where}.{key}")
    protocol = str(item.get("protocol", "http"))
    if protocol not in PROTOCOLS:
        raise fail("protocol", f"must be one of {', '.join(PROTOCOLS)}")
    try:
        url = _url(str(item["url"]), protocol)
    except ValueError as e:
        raise fail("url", str(e)) from e
    parsed: dict[str, Any] = {}
    for key, parse in (("pid", _pid), ("memory_budget", parse_bytes), ("timeout", parse_duration),
                       ("metrics_url", lambda v: _url(str(v), "http")), ("tls", _tls), ("headers", _headers),
                       ("models", _model_filter)):
        if key in item:
            try:
                parsed[key] = parse(item[key])
            except (UnitError, ValueError, TypeError) as e:
                raise fail(key, str(e)) from e
    return ServerConfig(
        name=str(item["name"]),
        url=url,
        protocol=protocol,
        metrics_url=parsed.get("metrics_url"),
        pid=parsed.get("pid"),
        memory_budget_bytes=parsed.get("memory_budget"),
        timeout_seconds=parsed.get("timeout", 2.0),
        tls=parsed.get("tls"),
        headers=parsed.get("headers", {}),
        models=parsed.get("models", ModelFilter()),
    )


def _url(text: str, protocol: str) -> str:
    if protocol == "grpc":
        if "//" in text or ":" not in text:
            raise ValueError(f"{text!r} is not HOST:PORT (gRPC)")
        return text
    try:
        host, _ = host_and_port(text)
    except ValueError:
        host = ""
    if not text.lower().startswith(("http://", "https://")) or not host:
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return text.rstrip("/")


def _pid(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{value!r} is not a process id")
    return value


def _tls(value: Any) -> TlsConfig:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping with ca, cert, key, insecure")
    unknown = set(value) - {"ca", "cert", "key", "insecure"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: ca, cert, key, insecure)")
    for key in ("ca", "cert", "key"):
        if key in value and not Path(str(value[key])).is_file():
            raise ValueError(f"{key}: {value[key]} is not a file")
    return TlsConfig(value.get("ca"), value.get("cert"), value.get("key"), bool(value.get("insecure", False)))


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of header name to value")
    return {str(k): str(v) for k, v in value.items()}


def _model_filter(value: Any) -> ModelFilter:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping with allow and/or deny: lists of model name globs")
    unknown = set(value) - {"allow", "deny"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: allow, deny)")
    lists = {}
    for key in ("allow", "deny"):
        items = value.get(key, [])
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
            raise ValueError(f"{key}: must be a list of model name globs")
        lists[key] = tuple(items)
    return ModelFilter(lists["allow"], lists["deny"])


def _unique(servers: tuple[ServerConfig, ...], origin: str) -> tuple[ServerConfig, ...]:
    seen: set[str] = set()
    for server in servers:
        if server.name in seen:
            raise InputError(f"{origin}: server name {server.name!r} is given twice")
        seen.add(server.name)
    return servers


def model_control_servers(servers: tuple[ServerConfig, ...]) -> tuple[ServerConfig, ...]:
    """The servers as the scheduler drives them (load, unload): read like the exporter's list, so
    both accept the same NAME=URL and config entries, but only over plain HTTP(S) model control."""
    for server in servers:
        if server.protocol != "http":
            raise InputError(f"server {server.name}: the scheduler needs its HTTP endpoint (protocol: http)")
        if server.tls is not None or server.headers:
            raise InputError(f"server {server.name}: the scheduler does not send tls or headers settings; "
                             "give it an endpoint that needs neither")
    return servers
