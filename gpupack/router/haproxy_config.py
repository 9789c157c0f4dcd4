"""The HAProxy configuration that routes Triton's HTTP API by model: written once from the servers
and today's placement, then driven at run time by ``gpupack.router.haproxy``.

Every (model, server) pair is declared, and the pairs not placed now start in maintenance, so a
move never needs a reload: it enables an entry that already exists. Health checks are fast (a few
hundred milliseconds) because the executor waits on them between the phases of a move.

Retries: HAProxy retries only a request whose connection to a server failed (its default
``retry-on conn-failure``), never one that a server answered, and a correct move never refuses a
connection. The retry and redispatch counters (``wretr``, ``wredis``) therefore stay at 0 through
moves; they count real failures (a server that died), which the retry hides from clients.
"""

from __future__ import annotations

import re
from typing import Collection, Sequence
from urllib.parse import quote

from gpupack.addresses import host_and_port, network_address
from gpupack.config import parse_listen
from gpupack.errors import InputError
from gpupack.router import MAX_WEIGHT, backend_name
from gpupack.servers import ServerConfig

FRONTEND = "triton"
# Requests that name no model (health, server metadata, the repository index): any live server.
ANY_SERVER_BACKEND = "any_server"
SERVER_HEADER = "X-Gpupack-Server"
RESOLVERS = "system"
DEFAULT_LISTEN = "0.0.0.0:8080"  # clients come from other hosts, as to Triton's own 0.0.0.0:8000

# HAProxy accepts these in proxy and server names (its invalid_char()).
_NAME = re.compile(r"^[A-Za-z0-9._:-]+$")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def render_config(servers: Sequence[ServerConfig], models: Sequence[str], placed: Collection[tuple[str, str]], *,
                  listen: str = DEFAULT_LISTEN, admin_socket: str) -> str:
    """The configuration for ``servers`` and ``models``; ``placed`` holds the (model, server name)
    pairs that serve now, all others start in maintenance.

    ``admin_socket`` is a file path (a unix socket, mode 600) or ``HOST:PORT`` on loopback (the
    runtime API over TCP, for a pod whose containers share no volume). Raises :class:`InputError`
    for a server HAProxy cannot front or name, or a placement naming an unknown model or server.
    """
    host, port = _listen(listen)
    names = [_server_name(server) for server in servers]
    unknown = sorted(pair for pair in placed if pair[0] not in models or pair[1] not in names)
    if unknown:
        model, server = unknown[0]
        raise InputError(f"placement: {model} on {server}: not among the models and servers routed")
    lines = [
        "# Written by `gpupack router config`: one backend per model, every (model, server) pair declared,",
        "# in maintenance unless the model is placed there. gpupack moves traffic through the runtime API.",
        "global",
        f"    stats socket {_admin_bind(admin_socket)}",
        "    stats timeout 1m",
        "",
        # Server names are resolved again as DNS changes (a Kubernetes Service, a restarted pod), and
        # one that does not resolve yet starts down instead of stopping HAProxy from starting.
        f"resolvers {RESOLVERS}",
        "    parse-resolv-conf",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 5m",
        "    timeout server 5m",  # an inference on a big batch may take minutes
        "    timeout http-request 30s",
        "    timeout http-keep-alive 1m",
        "    timeout queue 30s",
        "    timeout check 1s",
        "    retries 2",
        "    option redispatch",
        # Up after one good check, down after two bad ones: a move waits on these.
        "    default-server inter 200ms fastinter 100ms downinter 500ms rise 1 fall 2 "
        f"init-addr libc,none resolvers {RESOLVERS}",
        "",
        f"frontend {FRONTEND}",
        f"    bind {_bind_address(host)}:{port}",
        f"    http-response set-header {SERVER_HEADER} %s",
    ]
    for model in models:
        path = f"/v2/models/{quote(model, safe='')}"
        lines.append(f"    use_backend {backend_name(model)} if {{ path {path} }} || {{ path_beg {path}/ }}")
    lines += [f"    default_backend {ANY_SERVER_BACKEND}", ""]
    lines += _backend(ANY_SERVER_BACKEND, "/v2/health/ready", servers, names, serving=names)
    for model in models:
        lines += _backend(backend_name(model), f"/v2/models/{quote(model, safe='')}/ready", servers, names,
                          serving=[name for name in names if (model, name) in placed])
    return "\n".join(lines)


def _backend(name: str, check_path: str, servers: Sequence[ServerConfig], names: Sequence[str],
             serving: Collection[str]) -> list[str]:
    lines = [
        f"backend {name}",
        "    balance roundrobin",  # weights apply at once, in the ratio asked
        "    option httpchk",
        f"    http-check send meth GET uri {check_path} ver HTTP/1.1 hdr Host localhost",
        "    http-check expect status 200",
    ]
    for server, server_name in zip(servers, names):
        state = "" if server_name in serving else " disabled"
        address = f"{network_address(server.url)}{_tls(server)}"
        lines.append(f"    server {server_name} {address} weight {MAX_WEIGHT} check{state}")
    return lines + [""]


def _server_name(server: ServerConfig) -> str:
    if not _NAME.match(server.name):
        raise InputError(f"server {server.name!r}: the router names its entries after the servers; "
                         "use only letters, digits and . _ : -")
    if server.protocol != "http":
        raise InputError(f"server {server.name}: the router fronts Triton's HTTP endpoint (protocol: http)")
    if server.tls is not None or server.headers:
        raise InputError(f"server {server.name}: the router does not send tls or headers settings; "
                         "give it an endpoint that needs neither")
    return server.name


def _tls(server: ServerConfig) -> str:
    if not server.url.lower().startswith("https://"):
        return ""
    host, _ = host_and_port(server.url)
    return f" ssl verify required ca-file @system-ca sni str({host})"


def _listen(listen: str) -> tuple[str, int]:
    try:
        return parse_listen(listen, 8080)
    except ValueError as e:
        raise InputError(f"listen: {e}") from e


def _bind_address(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _admin_bind(admin_socket: str) -> str:
    try:
        address = admin_address(admin_socket)
    except ValueError as e:
        raise InputError(f"admin_socket: {e}") from e
    if not over_tcp(address):
        return f"{address} mode 600 level admin"
    host, port = host_and_port(address)
    family = "ipv6" if ":" in str(host) else "ipv4"
    return f"{family}@{_bind_address(str(host))}:{port} level admin"


def admin_address(value: str) -> str:
    """Where the runtime API listens: a unix socket path as given, or ``HOST:PORT`` on loopback
    (it has no authentication, so it never listens beyond this host or pod). Raises ValueError."""
    if not over_tcp(value):
        return value
    try:
        host, port = host_and_port(value)
    except ValueError:
        host, port = "", None
    if not port:
        raise ValueError(f"{value!r} is neither a socket path nor HOST:PORT")
    if host not in _LOOPBACK:
        raise ValueError(f"{value}: the runtime API has no authentication; listen on 127.0.0.1 (or ::1) only")
    return value


def over_tcp(address: str) -> bool:
    """Whether an admin address is ``HOST:PORT`` (the runtime API over TCP) rather than a socket path."""
    return "/" not in address and ":" in address
