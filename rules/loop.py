"""The evaluation loop: every interval fetch peaks, evaluate, publish; serve ``/metrics``.

One evaluation runs at a time, on a thread of its own, so a slow fetch delays the next evaluation
instead of stacking them; so does a rebalance asked for by the tracker, which runs inside the
evaluation that saw the violation. The main thread waits on an event; ``stop()`` sets it, then the
evaluation in progress gets ``STOP_GRACE_SECONDS`` to finish (a move in progress completes) and the
HTTP server closes, in order. The grace is bounded so that SIGTERM always ends the process well
inside Kubernetes' 30 s before SIGKILL: a step cut short leaves its model loaded where it was ready.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from gpupack.errors import GpupackError, InputError
from gpupack.rules.evaluator import evaluate
from gpupack.rules.loader import load_policies
from gpupack.rules.metrics import RulesCollector, RulesState
from gpupack.rules.peaks_source import PeaksSource
from gpupack.rules.policy import PolicySet
from gpupack.rules.transitions import RebalanceRequest, ViolationTracker
from gpupack.units import counted

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Acting:
    """What acts on ``rebalance`` policies, as the rules engine sees it: the small interface the
    scheduler is handed through (wired in ``gpupack.closedloop``, above both packages)."""

    request_rebalance: RebalanceRequest
    refresh_placement: Callable[[], object]
    app: Callable[..., WsgiApp]  # like prometheus_client's make_wsgi_app(registry): /metrics and the actor's pages
    # What one copy of each model serves in the configuration it is loaded in now, as the actor last
    # read the fleet; empty where it knows no better than the profile.
    copy_capacity_per_second: Callable[[], Mapping[str, float]] = dict


class PolicyFile(Collector):
    """The policies at a path, reloaded when a file changes; a bad edit keeps the last good set,
    and is counted (``gpupack_policy_load_errors_total``) beside the time of the last good load,
    so an alert can tell that the engine runs on an older file than the one on disk."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._signature = self._stat()
        self.policies: PolicySet = load_policies(self.path)
        self.loaded_at_seconds = clock()
        self.errors_total = 0

    def _stat(self) -> tuple:
        files = sorted(self.path.iterdir()) if self.path.is_dir() else [self.path]
        return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())

    def current(self) -> PolicySet:
        signature = self._stat()
        if signature != self._signature:
            self._signature = signature
            try:
                self.policies = load_policies(self.path)
                self.loaded_at_seconds = self._clock()
                log.info("reloaded %s from %s", counted(len(self.policies.policies), "policy"), self.path)
            except GpupackError as e:
                self.errors_total += 1
                log.warning("keeping the previous policies: %s", e)
        return self.policies

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("gpupack_policy_load_errors", "Policy file edits refused (the last good policies "
                                  "stay in force).", value=self.errors_total)
        yield GaugeMetricFamily("gpupack_policy_last_load_timestamp_seconds",
                                "When the policies in force were loaded.", value=self.loaded_at_seconds)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass  # a scrape every few seconds is not news


def _server_class(host: str, port: int) -> type[ThreadingWSGIServer]:
    """The server class for the address family of ``host``, so ``--listen [::]:9479`` works too."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return type("RulesHttpServer", (ThreadingWSGIServer,), {"address_family": family})


class RulesEngine:
    """``refresh_placement``, when given, runs after every evaluation: it reads where the models
    are now (the scheduler's ``/api/v1/placement``); a failure there is logged, never fatal."""

    def __init__(self, source: PeaksSource, policies: Callable[[], PolicySet], *,
                 tracker: ViolationTracker | None = None, refresh_placement: Callable[[], object] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source, self.policies, self.clock = source, policies, clock
        self.tracker = tracker or ViolationTracker()
        self.refresh_placement = refresh_placement
        self._state = RulesState()
        self._stopped = threading.Event()

    def state(self) -> RulesState:
        return self._state

    def evaluate_once(self) -> None:
        """One round. A failed fetch publishes no result at all: unknown, never ok, no action."""
        self._evaluate()
        if self.refresh_placement is not None:
            try:
                self.refresh_placement()
            except GpupackError as e:
                log.warning("placement not refreshed, /api/v1/placement shows the last one read: %s", e)

    def _evaluate(self) -> None:
        started = self.clock()
        policies = self.policies()  # first: an edit is read (or refused) whether or not the source answers
        try:
            snapshot = self.source()
        except GpupackError as e:
            log.warning("evaluation skipped, every policy unknown: %s", e)
            self._state = replace(self._state, errors_total=self._state.errors_total + 1, source_up=False,
                                  evaluation_duration_seconds=self.clock() - started)
            return
        evaluation = evaluate(snapshot, policies)
        self._state = replace(self._state, evaluation=evaluation, source_up=True,
                              evaluation_duration_seconds=self.clock() - started)
        self.tracker.update(evaluation)  # after publishing: a violation shows while a rebalance runs

    def serve(self, interval_seconds: float, host: str, port: int,
              app: Callable[[CollectorRegistry], WsgiApp] = make_wsgi_app) -> None:
        """Block until :meth:`stop`; evaluations start at once, then every ``interval_seconds``.

        ``app`` turns the registry holding the rules metrics into the HTTP application; the CLI
        passes the scheduler's, which adds its collector to the same registry and its placement.
        """
        registry = CollectorRegistry()
        registry.register(RulesCollector(self.state))
        policy_file = getattr(self.policies, "__self__", None)  # the CLI passes PolicyFile.current
        if isinstance(policy_file, PolicyFile):
            registry.register(policy_file)
        try:
            server = make_server(host, port, app(registry), _server_class(host, port), handler_class=_QuietHandler)
        except OSError as e:  # most often a second engine on the same port
            raise InputError(f"cannot listen on {host}:{port}: {(e.strerror or str(e)).lower()}") from e
        threading.Thread(target=server.serve_forever, name="rules-http", daemon=True).start()
        evaluations = threading.Thread(target=self._evaluate_every, args=(interval_seconds,), name="rules-evaluation",
                                       daemon=True)
        evaluations.start()
        log.info("rules engine serving http://%s:%d/metrics, evaluating every %gs", host, port, interval_seconds)
        try:
            self._stopped.wait()
        finally:
            evaluations.join(STOP_GRACE_SECONDS)
            if evaluations.is_alive():
                log.warning("stopping with an evaluation still running after %gs; a move it was making, if any, "
                            "leaves its model loaded where it was ready", STOP_GRACE_SECONDS)
            server.shutdown()
            server.server_close()

    def _evaluate_every(self, interval_seconds: float) -> None:
        """At once, then on each tick of the interval; an evaluation that overruns skips the ticks it
        missed rather than queueing them. A bug in one round is logged and the next still runs."""
        started = time.monotonic()
        while not self._stopped.is_set():
            try:
                self.evaluate_once()
            except Exception:
                log.exception("evaluation failed; the next one runs on schedule")
            if self._stopped.wait(interval_seconds - (time.monotonic() - started) % interval_seconds):
                return

    def stop(self) -> None:
        self._stopped.set()

