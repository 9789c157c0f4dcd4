"""The router's side of a move: each change applied, then read back before the next one.

A change the router acknowledged is not yet a change clients see: a copy enabled takes requests
only once the router's health check finds it up, and a copy set to drain still finishes the
requests it holds. So every change here waits, within the step's deadline, until the router
reports the state asked for, as a controller reconciles what it observes against what it wants.
Any refusal, silence or timeout is one :class:`RoutingFailed`, so the executor has one thing to
undo after.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, TypeVar

from gpupack.errors import GpupackError
from gpupack.router import DRAINING, OFF, SERVING, Router, RouteStatus
from gpupack.scheduler.demand.cost import capacity_per_second
from gpupack.scheduler.rebalance.current import FleetView
from gpupack.scheduler.rebalance.inputs import FleetInputs
from gpupack.scheduler.traffic import router_weights

_POLL_SECONDS = 0.05
T = TypeVar("T")


class RoutingFailed(GpupackError):
    """The router refused a change, did not answer, or did not reach the state asked for in time."""


class Routes:
    """One router, driven with read-backs; ``clock`` and ``sleep`` are the step's."""

    def __init__(self, router: Router, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.router, self.clock, self.sleep = router, clock, sleep

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except GpupackError as e:  # RouterError (refused) or UnreachableError (no answer)
            raise RoutingFailed(f"{self.router.describe()}: {what}: {e}") from e

    def _await(self, model: str, server: str, reached: Callable[[RouteStatus], bool], what: str,
               deadline: float) -> RouteStatus:
        while True:
            status = self._call(f"reading {model} on {server}", lambda: self.router.status(model, server))
            if reached(status):
                return status
            if self.clock() >= deadline:
                raise RoutingFailed(f"{self.router.describe()}: {model} on {server} {what} within the step timeout "
                                    f"(state {status.state}, up {status.up}, {status.sessions} sessions, "
                                    f"{status.queued} queued)")
            self.sleep(_POLL_SECONDS)

    def enable(self, model: str, server: str, weight: int, deadline: float) -> None:
        """In rotation, and up by the router's own health check."""
        self._call(f"enabling {model} on {server}", lambda: self.router.enable(model, server, weight))
        self._await(model, server, lambda s: s.state == SERVING and s.up, "not up", deadline)

    def reweight(self, model: str, weights: Mapping[str, int]) -> None:
        """Each server's weight; on a failure, the ones already changed are set back (as far as
        the router lets us) before raising, so a failed step leaves the weights it found."""
        before: dict[str, int] = {}
        try:
            for server, weight in sorted(weights.items()):
                before[server] = self._call(f"reading {model} on {server}",
                                            lambda: self.router.status(model, server).weight)
                self._call(f"weighting {model} on {server}", lambda: self.router.set_weight(model, server, weight))
        except RoutingFailed:
            for server, weight in before.items():
                try:
                    self.router.set_weight(model, server, weight)
                except GpupackError:
                    pass  # the failure raised below is what the step reports
            raise

    def drain(self, model: str, server: str) -> None:
        self._call(f"draining {model} on {server}", lambda: self.router.drain(model, server))

    def wait_drained(self, model: str, server: str, deadline: float) -> None:
        """Until the router holds no session and nothing queued for this copy."""
        self._await(model, server, lambda s: s.state == DRAINING and s.sessions == 0 and s.queued == 0,
                    "still has requests", deadline)

    def disable(self, model: str, server: str) -> None:
        self._call(f"disabling {model} on {server}", lambda: self.router.disable(model, server))
        self._await(model, server, lambda s: s.state == OFF, "not off", self.clock())

    def withdraw(self, model: str, server: str, deadline: float) -> None:
        """Drain, wait until empty, disable: a copy out of rotation with nothing lost."""
        self.drain(model, server)
        self.wait_drained(model, server, deadline)
        self.disable(model, server)


def align(router: Router, placed: Mapping[str, Mapping[str, float | None]], servers: tuple[str, ...]) -> list[str]:
    """Bring the router in line with the placement: each placed (model, server) pair serving at
    its weight, every other pair of these models off. Changes only what differs, so it is cheap
    to run before every run; a restarted router comes back right. ``placed``: model -> server ->
    what the copy there serves per second (None: unknown). Returns the changes, for people."""
    changes = []
    known = router.statuses(placed)
    for model, copies in sorted(placed.items()):
        weights = router_weights(copies)
        for server in servers:
            status = known.get((model, server))
            if status is None:  # a model added since the router's configuration was written
                changes.append(f"{model} on {server}: not in the router (write its configuration again)")
                continue
            if server in weights:
                if status.state != SERVING or status.weight != weights[server]:
                    router.enable(model, server, weights[server])
                    changes.append(f"{model} on {server}: serving, weight {weights[server]}")
            elif status.state != OFF:
                router.disable(model, server)
                changes.append(f"{model} on {server}: off")
    return changes


def copy_capacities(inputs: FleetInputs, fleet: FleetView) -> dict[tuple[str, str], float | None]:
    """(model, server) -> what the copy loaded there serves per second: its profiled
    configuration's capacity, else its model's, else None (unknown)."""
    searched = inputs.profile.configs if inputs.profile is not None else {}
    named = inputs.loaded_configs(fleet)
    capacities: dict[tuple[str, str], float | None] = {}
    for m in fleet.models:
        config = next((c for c in searched.get(m.model, ()) if c.name == named.get((m.model, m.device))), None)
        capacities[m.model, m.server] = capacity_per_second(config, None) if config is not None \
            else inputs.copy_capacity_per_second.get(m.model)
    return capacities


def by_model(capacities: Mapping[tuple[str, str], float | None]) -> dict[str, dict[str, float | None]]:
    """:func:`copy_capacities` as model -> server -> capacity, what :func:`align` takes."""
    placed: dict[str, dict[str, float | None]] = {}
    for (model, server), capacity in capacities.items():
        placed.setdefault(model, {})[server] = capacity
    return placed
