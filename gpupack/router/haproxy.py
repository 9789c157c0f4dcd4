"""HAProxy as the router: each change through its runtime API, which applies it and answers at once.

The address is the admin socket the configuration declares (``gpupack.router.haproxy_config``): a
file path for a unix socket, ``HOST:PORT`` for the runtime API over TCP. One connection per
command, as HAProxy's non-interactive mode expects: it answers and closes.
"""

from __future__ import annotations

import csv
import io
import socket
from dataclasses import dataclass
from typing import Iterable

from gpupack.addresses import host_and_port
from gpupack.errors import UnreachableError
from gpupack.router import DRAINING, MAX_WEIGHT, OFF, SERVING, RouterError, RouteStatus, backend_name
from gpupack.router.haproxy_config import over_tcp

_WHAT = "the router"

# ``show servers state`` columns (format 1) and the admin-state bits of HAProxy's server-t.h.
_ADMIN_MAINT = 0x01 | 0x02 | 0x20 | 0x40  # forced, inherited, DNS resolution, hostname
_ADMIN_DRAIN = 0x08 | 0x10  # forced, inherited
_OP_STOPPED = 0


@dataclass(frozen=True)
class RetryCount:
    """HAProxy's counters for one backend (``server`` is ``BACKEND``) or one server entry in it:
    requests retried after a failed connection, and retries sent to another server."""

    backend: str
    server: str
    retries: int  # wretr
    redispatches: int  # wredis


class HaproxyRouter:
    """The :class:`gpupack.router.Router` of a running HAProxy."""

    def __init__(self, admin_socket: str, timeout_seconds: float = 5.0) -> None:
        self.admin_socket = admin_socket
        self.timeout_seconds = timeout_seconds

    def describe(self) -> str:
        return f"HAProxy at {self.admin_socket}"

    def enable(self, model: str, server: str, weight: int) -> None:
        """Out of maintenance, HAProxy counts an entry up before any check has run; marked down in
        the same command, it takes requests only once a check has seen the model ready there. (An
        entry that was draining keeps the health its checks found.)"""
        self.set_weight(model, server, weight)  # before it takes requests, so the first ones split right
        leaving_maintenance = self.status(model, server).state == OFF
        self._set(model, server, "state ready", then="health down" if leaving_maintenance else None)

    def set_weight(self, model: str, server: str, weight: int) -> None:
        if not 1 <= weight <= MAX_WEIGHT:
            raise RouterError(f"weight {weight} for {model} on {server}: HAProxy takes 1 to {MAX_WEIGHT}")
        self._set(model, server, f"weight {weight}")

    def drain(self, model: str, server: str) -> None:
        self._set(model, server, "state drain")

    def disable(self, model: str, server: str) -> None:
        self._set(model, server, "state maint")

    def status(self, model: str, server: str) -> RouteStatus:
        """State, health and weight from ``show servers state``, sessions and queue from ``show
        stat``: the latter's status column alone reads DRAIN for a weight of 0 and DOWN for a
        draining entry whose check fails, so it cannot tell what gpupack asked for."""
        backend = backend_name(model)
        states = _table(self.command(f"show servers state {backend}"), f"{backend}/{server}", " ", skip=1)
        stats = _table(self.command(f"show stat {backend} 4 -1"), f"{backend}/{server}", ",")
        return _status(model, server, _row(states, "srv_name", server, backend), _row(stats, "svname", server, backend))

    def statuses(self, models: Iterable[str]) -> dict[tuple[str, str], RouteStatus]:
        """Two commands for the whole router, whatever the number of models and servers."""
        wanted = {backend_name(model): model for model in models}
        states = _table(self.command("show servers state"), "show servers state", " ", skip=1)
        stats = {(row["pxname"], row["svname"]): row
                 for row in _table(self.command("show stat -1 4 -1"), "show stat", ",")}  # 4: server entries
        return {(wanted[state["be_name"]], state["srv_name"]):
                _status(wanted[state["be_name"]], state["srv_name"], state, stats[state["be_name"], state["srv_name"]])
                for state in states
                if state["be_name"] in wanted and (state["be_name"], state["srv_name"]) in stats}

    def retry_counts(self) -> list[RetryCount]:
        """Every backend's and server entry's retries and redispatches since HAProxy started: a
        correct move needs none, so tests and benchmarks check that they stayed at 0."""
        rows = _table(self.command("show stat -1 6 -1"), "show stat", ",")  # 6: backends and servers
        return [RetryCount(row["pxname"], row["svname"], int(row["wretr"] or 0), int(row["wredis"] or 0))
                for row in rows]

    def command(self, line: str) -> str:
        """One runtime API command and HAProxy's whole answer."""
        try:
            with self._connect() as sock:
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as e:
            raise UnreachableError(_WHAT, self.admin_socket, e) from e
        return b"".join(chunks).decode(errors="replace")

    def _connect(self) -> socket.socket:
        if not over_tcp(self.admin_socket):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout_seconds)
            try:
                sock.connect(self.admin_socket)
            except OSError:
                sock.close()
                raise
            return sock
        host, port = host_and_port(self.admin_socket)
        return socket.create_connection((host, port), timeout=self.timeout_seconds)

    def _set(self, model: str, server: str, change: str, then: str | None = None) -> None:
        """One change, or two on one command line: HAProxy applies them back to back."""
        line = f"set server {backend_name(model)}/{server} {change}"
        if then:
            line += f"; set server {backend_name(model)}/{server} {then}"
        answer = self.command(line).strip()
        if answer:  # HAProxy answers a change it made with an empty line
            raise RouterError(f"{self.describe()} refused '{line}' ({model} on {server}): {_one_line(answer)}")


def _table(answer: str, what: str, separator: str, skip: int = 0) -> list[dict[str, str]]:
    """The rows of ``show stat`` (CSV) or ``show servers state`` (a version line, then columns
    separated by spaces), each header line starting with ``# ``."""
    lines = answer.splitlines()[skip:]
    if not lines or not lines[0].startswith("# "):
        raise RouterError(f"HAProxy answered {what} with: {_one_line(answer) or 'nothing'}")
    body = [lines[0].removeprefix("# ")] + [line for line in lines[1:] if line.strip()]
    reader = csv.reader(io.StringIO("\n".join(body)), delimiter=separator)
    header = next(reader)
    return [dict(zip(header, row)) for row in reader]


def _status(model: str, server: str, state: dict[str, str], stat: dict[str, str]) -> RouteStatus:
    admin = int(state["srv_admin_state"])
    return RouteStatus(
        model=model,
        server=server,
        state=OFF if admin & _ADMIN_MAINT else DRAINING if admin & _ADMIN_DRAIN else SERVING,
        up=int(state["srv_op_state"]) != _OP_STOPPED,
        weight=int(state["srv_uweight"]),
        sessions=int(stat["scur"] or 0),
        queued=int(stat["qcur"] or 0),
    )


def _row(rows: list[dict[str, str]], column: str, server: str, backend: str) -> dict[str, str]:
    for row in rows:
        if row.get(column) == server:
            return row
    raise RouterError(f"HAProxy has no server {server} in {backend}")


def _one_line(text: str) -> str:
    return " ".join(text.split())
