"""Routing clients to the copies of a model: what the executor asks of a router, and its vocabulary.

gpupack owns the order of every step of a move, so it drives the router itself: a copy is enabled
(and seen up by the router) before another one is drained, and drained (no session, nothing
queued) before its model is unloaded. HAProxy's runtime API (``gpupack.router.haproxy``) applies
and acknowledges each change at once, which is what makes that order exact.

Names: one backend per model (:func:`backend_name`), in it one server entry per Triton server,
named as the server is in the config (``ServerConfig.name``), declared for every (model, server)
pair and kept in maintenance unless the model is placed there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Protocol

from gpupack.errors import GpupackError

# What a copy is to the router; the placement document publishes the same words.
SERVING = "serving"  # in rotation: takes new requests by its weight
DRAINING = "draining"  # finishes what it has, takes nothing new
OFF = "off"  # maintenance: not placed here, or unloaded
# Weights run 1..MAX_WEIGHT (HAProxy's range); the copy that serves most gets MAX_WEIGHT, and a
# configuration written before gpupack has weighed anything gives every copy it, an even split.
MAX_WEIGHT = 256


def backend_name(model: str) -> str:
    """The HAProxy backend of a model: ``model_`` and the name with anything outside
    ``[A-Za-z0-9.-]`` written as ``_HH`` (its hex code), so two models never share a backend."""
    return "model_" + re.sub(r"[^A-Za-z0-9.-]", lambda m: f"_{ord(m.group()):02x}", model)


@dataclass(frozen=True)
class RouteStatus:
    """One (model, server) entry as the router reports it now."""

    model: str
    server: str
    state: str  # SERVING, DRAINING or OFF
    up: bool  # the router's health check passes
    weight: int
    sessions: int  # requests in flight on this entry
    queued: int  # requests waiting for it


class Router(Protocol):
    """The changes a move makes, each applied and acknowledged before it returns.

    Raises :class:`gpupack.errors.UnreachableError` when the router does not answer, and
    :class:`RouterError` when it refuses a change (an unknown model or server, say).
    """

    def status(self, model: str, server: str) -> RouteStatus: ...

    def statuses(self, models: Iterable[str]) -> dict[tuple[str, str], RouteStatus]:
        """Every entry of these models, read at once; a model the router lacks has none. Aligning
        the router with the whole fleet, on every evaluation, reads this, not each entry alone."""

    def enable(self, model: str, server: str, weight: int) -> None:
        """Into rotation with this weight (1..MAX_WEIGHT); the router's health check decides when it is up."""

    def set_weight(self, model: str, server: str, weight: int) -> None: ...

    def drain(self, model: str, server: str) -> None:
        """No new requests; those in flight finish."""

    def disable(self, model: str, server: str) -> None:
        """Out of rotation entirely (maintenance)."""

    def describe(self) -> str:
        """For people: ``HAProxy at /run/haproxy/admin.sock``."""


class RouterError(GpupackError):
    """The router answered but refused a change; the message carries its words."""
