"""What the rebalancer publishes: where each model runs, and how its moves went.

A :class:`RebalanceState` holds one immutable :class:`RebalanceSnapshot`, replaced whole under a
lock whenever something changes; the Prometheus collector and the ``/api/v1/placement`` handler
only read the snapshot they got, so a scrape never sees half an update, and a model that left a
server simply stops appearing.

The placement document serves routers that poll it: each copy's server URL, its state in the
rotation (``serving``, ``draining``, ``off``: the words of :mod:`gpupack.router`), its weight and
traffic share by what its configuration serves (:mod:`gpupack.scheduler.traffic`), and a
``generation`` that grows with every publish. The executor publishes after every phase of a step,
so a router sees the target serving before the source drains, and the source draining before it
is unloaded.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gpupack.router import SERVING
from gpupack.scheduler.rebalance.current import FleetView, LoadedModel
from gpupack.scheduler.rebalance.desired import Desired
from gpupack.scheduler.traffic import router_weights, traffic_shares

# target_lost: a failed step whose target stopped serving before the source was unloaded (the source kept it).
MOVE_RESULTS = ("succeeded", "failed", "target_lost", "deferred")


@dataclass(frozen=True)
class RebalanceSnapshot:
    placement: tuple[LoadedModel, ...] = ()
    placement_read_at_seconds: float | None = None
    moves_total: Mapping[str, int] = field(default_factory=lambda: MappingProxyType(dict.fromkeys(MOVE_RESULTS, 0)))
    last_success_timestamp_seconds: float | None = None
    desired_copies: Mapping[str, int] = field(default_factory=dict)  # model -> copies the desired state wants
    servers_down: tuple[str, ...] = ()
    server_urls: Mapping[str, str] = field(default_factory=dict)  # server -> its URL, for routers
    # (model, server) -> what the copy loaded there serves per second (None: unknown)
    capacities: Mapping[tuple[str, str], float | None] = field(default_factory=dict)
    # (model, server) -> DRAINING or OFF for a copy out of rotation during a step; the others serve
    routes: Mapping[tuple[str, str], str] = field(default_factory=dict)
    generation: int = 0


class RebalanceState:
    """The one mutable holder; every writer swaps in a new snapshot."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        # Generations start at the wall clock's milliseconds: a restarted engine's documents are
        # still newer than the last one a router applied.
        self._snapshot = RebalanceSnapshot(generation=int(clock() * 1000))

    def snapshot(self) -> RebalanceSnapshot:
        return self._snapshot

    def _swap(self, change: Callable[[RebalanceSnapshot], RebalanceSnapshot]) -> None:
        with self._lock:
            self._snapshot = change(self._snapshot)

    def publish_placement(self, fleet: FleetView, desired: Desired,
                          capacities: Mapping[tuple[str, str], float | None] | None = None,
                          server_urls: Mapping[str, str] | None = None) -> None:
        """Where every copy is now; a copy no longer loaded drops its routing state with it."""
        loaded = {(m.model, m.server) for m in fleet.models}
        self._swap(lambda s: replace(
            s, placement=fleet.models, placement_read_at_seconds=fleet.generated_at_seconds,
            desired_copies=_counts(desired), servers_down=tuple(sorted(fleet.down)),
            capacities=MappingProxyType(dict(capacities if capacities is not None else s.capacities)),
            server_urls=MappingProxyType(dict(server_urls if server_urls is not None else s.server_urls)),
            routes=MappingProxyType({k: v for k, v in s.routes.items() if k in loaded}),
            generation=s.generation + 1))

    def publish_routes(self, model: str, routes: Mapping[str, str]) -> None:
        """A step's phase changed how ``model`` is routed on these servers (server -> state)."""
        def change(s: RebalanceSnapshot) -> RebalanceSnapshot:
            updated = dict(s.routes)
            for server, state in routes.items():
                if state == SERVING:
                    updated.pop((model, server), None)
                else:
                    updated[model, server] = state
            return replace(s, routes=MappingProxyType(updated), generation=s.generation + 1)

        self._swap(change)

    def all_serving(self) -> None:
        """The router was brought in line with the placement: every loaded copy serves."""
        self._swap(lambda s: replace(s, routes=MappingProxyType({}), generation=s.generation + 1))

    def publish_desired(self, desired: Desired) -> None:
        self._swap(lambda s: replace(s, desired_copies=_counts(desired)))

    def count_moves(self, result: str, count: int = 1) -> None:
        def change(s: RebalanceSnapshot) -> RebalanceSnapshot:
            totals = dict(s.moves_total)
            totals[result] = totals.get(result, 0) + count
            return replace(s, moves_total=MappingProxyType(totals))

        self._swap(change)

    def mark_success(self, at_seconds: float) -> None:
        self._swap(lambda s: replace(s, last_success_timestamp_seconds=at_seconds))


def _counts(desired: Desired) -> Mapping[str, int]:
    return MappingProxyType({model: len(copies) for model, copies in desired.items()})


class RebalanceCollector(Collector):
    def __init__(self, state: RebalanceState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        snapshot = self.state.snapshot()
        moves = CounterMetricFamily(
            "gpupack_rebalance_moves", "Move steps by result (succeeded, failed, deferred to a later run).",
            labels=["result"],
        )
        for result, count in sorted(snapshot.moves_total.items()):
            moves.add_metric([result], count)
        yield moves
        if snapshot.last_success_timestamp_seconds is not None:
            yield GaugeMetricFamily(
                "gpupack_rebalance_last_success_timestamp_seconds",
                "When a rebalance run last finished without a failed step.",
                value=snapshot.last_success_timestamp_seconds,
            )
        placement = GaugeMetricFamily(
            "gpupack_model_placement", "1 for each model version loaded on a server and device.",
            labels=["server", "model", "version", "device"],
        )
        for entry in snapshot.placement:
            placement.add_metric([entry.server, entry.model, entry.version, entry.device], 1)
        yield placement
        ready: dict[str, set[tuple[str, str]]] = {}
        for entry in snapshot.placement:
            ready.setdefault(entry.model, set()).add((entry.server, entry.device))
        ready_copies = GaugeMetricFamily(
            "gpupack_model_ready_copies", "Copies of each model ready on a server that answers; 0 when the fleet "
            "should serve it (gpupack_model_desired_copies) and none is ready.", labels=["model"])
        desired_copies = GaugeMetricFamily(
            "gpupack_model_desired_copies", "Copies of each model the rebalancer's desired state wants.",
            labels=["model"])
        for model in sorted(set(ready) | set(snapshot.desired_copies)):
            ready_copies.add_metric([model], len(ready.get(model, ())))
            if model in snapshot.desired_copies:
                desired_copies.add_metric([model], snapshot.desired_copies[model])
        yield ready_copies
        yield desired_copies


def placement_document(snapshot: RebalanceSnapshot) -> dict[str, Any]:
    """The ``/api/v1/placement`` JSON: where each model is, for routers and dashboards.

    ``traffic_share`` is each copy's part of its model version's traffic by what its configuration
    serves, ``weight`` the same as a router weight (1..256); a copy out of rotation (draining, off)
    has neither share nor weight. A server's share is the sum of its copies'. ``generation`` grows
    with every publish: a router applies a document only when it is newer than the last one.
    """
    def state(m: LoadedModel) -> str:
        return snapshot.routes.get((m.model, m.server), SERVING)

    # By (server, device): one server over several GPUs holds one copy per GPU.
    serving: dict[tuple[str, str], dict[tuple[str, str], float | None]] = {}
    for m in snapshot.placement:
        if state(m) == SERVING:
            serving.setdefault((m.model, m.version), {})[m.server, m.device] = \
                snapshot.capacities.get((m.model, m.server))
    shares = {key: traffic_shares(copies) for key, copies in serving.items()}
    weights = {key: router_weights(copies) for key, copies in serving.items()}
    return {
        "generation": snapshot.generation,
        "read_at_seconds": snapshot.placement_read_at_seconds,
        "models": [
            {"server": m.server, "url": snapshot.server_urls.get(m.server), "model": m.model, "version": m.version,
             "device": m.device, "state": state(m),
             "weight": weights.get((m.model, m.version), {}).get((m.server, m.device), 0),
             "traffic_share": shares.get((m.model, m.version), {}).get((m.server, m.device), 0.0)}
            for m in snapshot.placement
        ],
    }


def make_wsgi_app(
    state: RebalanceState, registry: CollectorRegistry | None = None
) -> Callable[[dict, Callable], Iterable[bytes]]:
    """``/metrics`` and ``/api/v1/placement`` over this state, for whichever daemon hosts it.

    A host with metrics of its own (the rules engine) passes its ``registry``: the rebalancer's
    collector joins it, so one scrape of one port returns both.
    """
    registry = CollectorRegistry() if registry is None else registry
    registry.register(RebalanceCollector(state))

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body, content_type = generate_latest(registry), CONTENT_TYPE_LATEST
        elif path == "/api/v1/placement":
            body, content_type = json.dumps(placement_document(state.snapshot())).encode(), "application/json"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics or /api/v1/placement\n"]
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    return app
