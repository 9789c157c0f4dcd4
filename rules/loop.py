"""The evaluation loop: every interval fetch peaks, evaluate, publish; serve ``/metrics``.

APScheduler runs one job at a time (``max_instances=1``, coalesced), so a slow fetch delays the
next evaluation instead of stacking them. The main thread waits on an event; ``stop()`` sets it,
then the scheduler drains and the HTTP server closes, in that order.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry, start_http_server

from gpupack.errors import GpupackError
from gpupack.rules.evaluator import evaluate
from gpupack.rules.loader import load_policies
from gpupack.rules.metrics import RulesCollector, RulesState
from gpupack.rules.peaks_source import PeaksSource
from gpupack.rules.policy import PolicySet
from gpupack.rules.transitions import ViolationTracker

log = logging.getLogger(__name__)


class PolicyFile:
    """The policies at a path, reloaded when a file changes; a bad edit keeps the last good set."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._signature = self._stat()
        self.policies: PolicySet = load_policies(self.path)

    def _stat(self) -> tuple:
        files = sorted(self.path.iterdir()) if self.path.is_dir() else [self.path]
        return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())

    def current(self) -> PolicySet:
        signature = self._stat()
        if signature != self._signature:
            self._signature = signature
            try:
                self.policies = load_policies(self.path)
                log.info("reloaded %d policies from %s", len(self.policies.policies), self.path)
            except GpupackError as e:
                log.warning("keeping the previous policies: %s", e)
        return self.policies


class RulesEngine:
    def __init__(self, source: PeaksSource, policies: Callable[[], PolicySet], *,
                 tracker: ViolationTracker | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.source, self.policies, self.clock = source, policies, clock
        self.tracker = tracker or ViolationTracker()
        self._state = RulesState()
        self._stopped = threading.Event()

    def state(self) -> RulesState:
        return self._state

    def evaluate_once(self) -> None:
        """One round. A failed fetch publishes no result at all: unknown, never ok, no action."""
        started = self.clock()
        try:
            snapshot = self.source()
        except GpupackError as e:
            log.warning("evaluation skipped, every policy unknown: %s", e)
            self._state = replace(self._state, errors_total=self._state.errors_total + 1, source_up=False,
                                  evaluation_duration_seconds=self.clock() - started)
            return
        evaluation = evaluate(snapshot, self.policies())
        self.tracker.update(evaluation)
        self._state = replace(self._state, evaluation=evaluation, source_up=True,
                              evaluation_duration_seconds=self.clock() - started)

    def serve(self, interval_seconds: float, host: str, port: int) -> None:
        """Block until :meth:`stop`; evaluations start at once, then every ``interval_seconds``."""
        registry = CollectorRegistry()
        registry.register(RulesCollector(self.state))
        server, _ = start_http_server(port, host, registry=registry)
        scheduler = BackgroundScheduler()
        scheduler.add_job(self.evaluate_once, "interval", seconds=interval_seconds, max_instances=1, coalesce=True,
                          next_run_time=datetime.now(timezone.utc))
        scheduler.start()
        log.info("rules engine serving http://%s:%d/metrics, evaluating every %gs", host, port, interval_seconds)
        try:
            self._stopped.wait()
        finally:
            scheduler.shutdown(wait=True)
            server.shutdown()
            server.server_close()

    def stop(self) -> None:
        self._stopped.set()

