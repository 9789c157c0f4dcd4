"""The router setting, read in one place: the config file's ``router:`` section or ``--router``.

``router: {kind: haproxy, listen: HOST:PORT, admin_socket: PATH}`` says where clients reach the
models (``listen``, what ``gpupack router config`` writes into HAProxy's configuration) and where
gpupack drives it (``admin_socket``: a unix socket path, or ``HOST:PORT`` of the runtime API over
TCP on loopback). ``--router haproxy:PATH`` on ``rebalance`` and ``rules run`` names the admin
socket alone and wins over the file. No environment layer: a router is configured where the
servers it fronts are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpupack.config import ConfigFile, Setting, parse_listen, resolve_settings
from gpupack.errors import InputError
from gpupack.router import Router
from gpupack.router.haproxy import HaproxyRouter
from gpupack.router.haproxy_config import DEFAULT_LISTEN, admin_address

SECTION = "router"
KINDS = ("haproxy",)
DEFAULT_ADMIN_SOCKET = "/run/haproxy/admin.sock"  # Debian's haproxy.cfg puts its socket here
FLAG_HELP = ("drive this router through each move, so clients follow the models: haproxy:PATH (its admin "
             "socket, or HOST:PORT of its runtime API) (default: the config file's router section; without "
             "either, clients are not redirected)")


def _kind(value: Any) -> str:
    if value not in KINDS:
        raise ValueError(f"{value!r} is not a router gpupack drives (known: {', '.join(KINDS)})")
    return str(value)


def _listen(value: Any) -> str:
    host, port = parse_listen(value, 8080)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _admin_socket(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be the path of HAProxy's admin socket, or HOST:PORT of its runtime API")
    return admin_address(value.strip())


SETTINGS = (
    Setting("kind", _kind, "haproxy", "the router: haproxy"),
    Setting("listen", _listen, DEFAULT_LISTEN, "where clients reach the models through the router"),
    Setting("admin_socket", _admin_socket, DEFAULT_ADMIN_SOCKET,
            "HAProxy's admin socket (a path), or HOST:PORT of its runtime API on loopback"),
)


@dataclass(frozen=True)
class RouterSettings:
    kind: str
    listen: str  # HOST:PORT
    admin_socket: str  # a path, or HOST:PORT


def router_settings(config: ConfigFile | None) -> RouterSettings:
    """The config file's router section, validated; defaults where it says nothing (or is absent)."""
    values = resolve_settings(SECTION, SETTINGS, config, {}, {})
    return RouterSettings(values["kind"], values["listen"], values["admin_socket"])


def router_from_settings(config: ConfigFile | None, flag: str | None) -> Router | None:
    """The router moves drive: ``--router`` if given, else the config file's router section,
    else None (moves go on as before, and clients are not redirected)."""
    if flag is not None:
        kind, _, address = flag.partition(":")
        if kind not in KINDS or not address.strip():
            raise InputError(f"--router: {flag!r} is not haproxy:PATH (the admin socket, or HOST:PORT of its "
                             "runtime API)")
        try:
            return HaproxyRouter(admin_address(address.strip()))
        except ValueError as e:
            raise InputError(f"--router: {e}") from e
    if config is None or config.section(SECTION) is None:
        return None
    return HaproxyRouter(router_settings(config).admin_socket)
