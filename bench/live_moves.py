"""Clients served through the router while a model moves: is any request lost, and what do moves cost?

Three CPU-only Triton servers (a, b, c) behind a real HAProxy that gpupack drives; client threads
send inferences back to back to ``http://ROUTER/v2/models/echo/infer`` while the real executor
moves the model between a and b N times, then adds a copy on c and removes it again (one scale-out,
one scale-in), each step in the routed order (target loaded and up in the router, then the source
drained, then unloaded). For comparison the same clients then call server a directly while one move
runs without a router, as clients did before gpupack drove one.

    .venv/bin/python bench/live_moves.py              # 10 moves
    .venv/bin/python bench/live_moves.py --moves 30 --clients 16

prints requests sent, failed and p50/p99 latency in the steady state (no move running) and during
the moves, HAProxy's retry and redispatch counters, and what clients without the router got. The
test suite (tests/router/test_live_moves.py) runs the same scenario and checks who answered when.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import requests

from gpupack.router import DRAINING, OFF, Router, RouteStatus
from gpupack.router.haproxy_config import SERVER_HEADER
from gpupack.router.launcher import HaproxyProcess
from gpupack.scheduler.rebalance.audit import AuditLog, read_audit
from gpupack.scheduler.rebalance.executor import ServerPerDeviceExecutor
from gpupack.scheduler.rebalance.step_mechanics import StepContext
from gpupack.scheduler.rebalance.routing import align
from gpupack.scheduler.rebalance.steps import Step
from gpupack.servers import ServerConfig
from gpupack.testing import SampleModel, TritonInstallation, TritonServer, find_tritonserver, write_model_repository
from gpupack.testing.haproxy import haproxy_in_front

MIB = 2**20
# 10 ms of CPU per request: a copy being drained still has requests in flight for the router to wait on.
MODEL = SampleModel("echo", 8 * MIB, compute_seconds=0.01)
SERVERS = ("a", "b", "c")
DEFAULT_MOVES = 10
DEFAULT_CLIENTS = 8
STEADY_SECONDS = 5.0
SETTLE_SECONDS = 0.3  # each placement serves a moment before the next step, so that it is seen serving


def move_steps(moves: int) -> list[Step]:
    """``moves`` moves between a and b, then a copy added on c (scale-out) and removed (scale-in)."""
    hops = [Step(MODEL.name, *("a", "b") if i % 2 == 0 else ("b", "a")) for i in range(moves)]
    return [*hops, Step(MODEL.name, None, "c"), Step(MODEL.name, "c", None)]


# -- clients ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """One inference request as its client saw it."""

    started: float  # time.monotonic() when sent
    ended: float
    status: int | None  # None: no HTTP answer at all (refused, reset, timed out)
    server: str  # who answered, from the router's header; "" without a router
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.status != 200

    @property
    def latency_seconds(self) -> float:
        return self.ended - self.started


class Clients:
    """Threads that send inferences back to back to one URL until stopped, each on its own
    keep-alive connection as a real client keeps one; every answer is kept."""

    def __init__(self, base_url: str, model: str, threads: int, timeout_seconds: float = 10.0) -> None:
        self.url = f"{base_url}/v2/models/{model}/infer"
        self.body = {"inputs": [{"name": "INPUT0", "shape": [1, MODEL.input_width], "datatype": "FP32",
                                 "data": [0.5] * MODEL.input_width}]}
        self.timeout_seconds = timeout_seconds
        self._stop = threading.Event()
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._send, daemon=True) for _ in range(threads)]

    def _send(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = session.post(self.url, json=self.body, timeout=self.timeout_seconds)
                    answer = Answer(started, time.monotonic(), response.status_code,
                                    response.headers.get(SERVER_HEADER, ""), "" if response.ok else response.text[:200])
                except requests.RequestException as e:
                    answer = Answer(started, time.monotonic(), None, "", f"{type(e).__name__}: {e}"[:200])
                with self._lock:
                    self._answers.append(answer)

    def __enter__(self) -> "Clients":
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join()

    def answers(self) -> list[Answer]:
        with self._lock:
            return list(self._answers)


# -- moves, and when each phase happened ------------------------------------------------------------

@dataclass(frozen=True)
class StepMarks:
    """When the phases of one step happened (``time.monotonic``), from the executor's audit log."""

    step: Step
    started: float
    ended: float
    target_ready: float | None = None  # the target answers an inference (not yet in the router)
    source_drained: float | None = None  # the router holds no session and nothing queued on the source
    unloaded: float | None = None  # source_unloaded

    @classmethod
    def from_audit(cls, step: Step, events: Sequence[dict[str, Any]]) -> "StepMarks":
        at = {e["event"]: e["time_seconds"] for e in events}
        return cls(step, at["step_started"], at.get("step_succeeded", events[-1]["time_seconds"]),
                   at.get("target_ready"), at.get("source_drained"), at.get("source_unloaded"))


class _SkipsTheDrain:
    """A broken order, for a control run: the router is never asked to drain or disable a copy, yet
    reports it drained and then off, so the executor unloads the source while it still takes requests."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._pretended: dict[tuple[str, str], str] = {}

    def status(self, model: str, server: str) -> RouteStatus:
        status = self.router.status(model, server)
        state = self._pretended.get((model, server))
        return status if state is None else RouteStatus(model, server, state, status.up, status.weight, 0, 0)

    def statuses(self, models: Iterable[str]) -> dict[tuple[str, str], RouteStatus]:
        return {pair: self.status(*pair) for pair in self.router.statuses(models)}

    def enable(self, model: str, server: str, weight: int) -> None:
        self._pretended.pop((model, server), None)
        self.router.enable(model, server, weight)

    def set_weight(self, model: str, server: str, weight: int) -> None:
        self.router.set_weight(model, server, weight)

    def drain(self, model: str, server: str) -> None:
        self._pretended[model, server] = DRAINING

    def disable(self, model: str, server: str) -> None:
        self._pretended[model, server] = OFF

    def describe(self) -> str:
        return self.router.describe()


def carry_out(steps: Sequence[Step], servers: dict[str, ServerConfig], router: Router | None, placed: Sequence[str],
              audit_path: Path) -> list[StepMarks]:
    """Each step by the real executor, as ``gpupack rebalance --apply`` runs it, the model starting
    on the servers ``placed``; each placement then serves a moment before the next step."""
    audit = AuditLog(audit_path, clock=time.monotonic)
    context = StepContext(audit=audit, step_timeout_seconds=60.0, drain_seconds=1.0, router=router,
                          copies={(MODEL.name, server): None for server in placed})
    executor = ServerPerDeviceExecutor(servers, context)
    done = []
    for step in steps:
        first = len(read_audit(audit_path))
        executor.execute(step)
        done.append(StepMarks.from_audit(step, read_audit(audit_path)[first:]))
        time.sleep(SETTLE_SECONDS)
    return done


# -- the fleet, a run and its verdict ---------------------------------------------------------------

@dataclass
class Run:
    """What the clients got while the steps ran, and what the router counted."""

    answers: list[Answer]
    marks: list[StepMarks]
    retries: dict[str, int] = field(default_factory=dict)  # HAProxy's wretr and wredis, with a router

    @property
    def moving(self) -> tuple[float, float]:
        return (self.marks[0].started, self.marks[-1].ended) if self.marks else (0.0, 0.0)

    def during_moves(self) -> list[Answer]:
        """From the first step on, to the end of the run: what clients got once anything changed."""
        return [a for a in self.answers if a.started >= self.moving[0]]

    def steady(self) -> list[Answer]:
        return [a for a in self.answers if a.ended < self.moving[0]]

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.failed]


def problems(run: Run) -> list[str]:
    """What a client of the model would have noticed, or the router did to hide it; empty when
    every request succeeded, without a retry, and each copy served exactly when it should."""
    found = []
    failed = run.failures()
    if failed:
        kinds = Counter(f"{a.status or 'no answer'} from {a.server or 'the server'}: {a.error}" for a in failed)
        found.append(f"{len(failed)} of {len(run.answers)} requests failed: "
                     + "; ".join(f"{n} x {kind}" for kind, n in kinds.most_common(3)))
    for counter, value in sorted(run.retries.items()):
        if value:
            found.append(f"HAProxy's {counter} is {value}: a request was retried or sent to another server")
    following = [m.started for m in run.marks[1:]] + [float("inf")]
    for marks, next_step in zip(run.marks, following):
        step = marks.step
        if step.source is not None:
            if marks.unloaded is None:
                found.append(f"{step.describe()}: the source was not unloaded")
                continue
            after = [a for a in run.answers if marks.unloaded <= a.started < next_step and not a.failed]
            wrong = Counter(a.server for a in after if a.server == step.source
                            or (step.target is not None and a.server != step.target))
            if wrong:
                found.append(f"{step.describe()}: after the unload, answered by {dict(wrong)}, not only by the target")
        if step.source is not None and step.target is not None:
            if marks.target_ready is None or marks.source_drained is None:
                found.append(f"{step.describe()}: the target was never ready, or the source never drained")
                continue
            both = {a.server for a in run.answers if marks.target_ready <= a.ended <= marks.source_drained}
            if not {step.source, step.target} <= both:
                found.append(f"{step.describe()}: between target ready and source drained only {sorted(both)} answered")
        if step.source is None and step.target is not None:
            if not any(a.server == step.target for a in run.answers if marks.ended <= a.started < next_step):
                found.append(f"{step.describe()}: the added copy never answered")
    return found


@dataclass
class LiveFleet:
    """Servers a, b and c over one repository, the model loaded on a, and HAProxy in front."""

    servers: dict[str, TritonServer]
    router: HaproxyProcess

    def configs(self) -> dict[str, ServerConfig]:
        return {name: ServerConfig(name, server.http_url) for name, server in self.servers.items()}

    def retries(self) -> dict[str, int]:
        """HAProxy's retry and redispatch counters since it started, over every backend and entry."""
        counts = [c for c in self.router.router().retry_counts() if c.server != "BACKEND"]
        return {"wretr": sum(c.retries for c in counts), "wredis": sum(c.redispatches for c in counts)}


@contextlib.contextmanager
def live_fleet(workdir: Path, installation: TritonInstallation) -> Iterator[LiveFleet]:
    repository = write_model_repository(workdir / "models", [MODEL])
    servers = {name: TritonServer(repository, name=name, installation=installation,
                                  log_path=workdir / "logs" / f"triton-{name}.log") for name in SERVERS}
    try:
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.wait_ready()
        servers["a"].load_model(MODEL.name)
        configs = [ServerConfig(name, server.http_url) for name, server in servers.items()]
        with haproxy_in_front(configs, [MODEL.name], {(MODEL.name, "a")}, workdir / "router") as router:
            align(router.router(), {MODEL.name: {"a": None}}, SERVERS)  # as `rules run` does before it acts
            yield LiveFleet(servers, router)
    finally:
        for server in servers.values():
            server.stop()


def run_moves(fleet: LiveFleet, steps: Sequence[Step], workdir: Path, clients: int = DEFAULT_CLIENTS,
              routed: bool = True, skip_the_drain: bool = False, steady_seconds: float = 1.0) -> Run:
    """Clients on the router while the executor carries out ``steps`` with it (``skip_the_drain``:
    in a broken order); or, not ``routed``, clients on the first source's own URL and no router."""
    placed = sorted(name for name, server in fleet.servers.items() if MODEL.name in server.ready_models())
    router: Router | None = None
    if routed:
        router = _SkipsTheDrain(fleet.router.router()) if skip_the_drain else fleet.router.router()
    url = fleet.router.url if routed else fleet.servers[placed[0]].http_url
    with Clients(url, MODEL.name, clients) as load:
        time.sleep(steady_seconds)  # the steady state the moves are compared against
        marks = carry_out(steps, fleet.configs(), router, placed, workdir / f"audit-{time.monotonic_ns()}.jsonl")
    return Run(load.answers(), marks, fleet.retries() if routed else {})


# -- the benchmark ----------------------------------------------------------------------------------

def _row(label: str, answers: Sequence[Answer]) -> str:
    latencies = sorted(a.latency_seconds * 1000 for a in answers if not a.failed)
    p50, p99 = (f"{statistics.quantiles(latencies, n=100)[q]:.1f}" if len(latencies) > 1 else "-" for q in (49, 98))
    failed = sum(a.failed for a in answers)
    return f"{label:<34} {len(answers):>8} {failed:>7} {p50:>8} {p99:>8}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=DEFAULT_MOVES, metavar="N",
                        help=f"moves between servers a and b (default: {DEFAULT_MOVES}), then one scale-out and one scale-in")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, metavar="N",
                        help=f"client threads sending back to back (default: {DEFAULT_CLIENTS})")
    args = parser.parse_args()
    installation = find_tritonserver()
    with tempfile.TemporaryDirectory(prefix="gpupack-live-moves-") as directory:
        workdir = Path(directory)
        with live_fleet(workdir, installation) as fleet:
            routed = run_moves(fleet, move_steps(args.moves), workdir, args.clients, steady_seconds=STEADY_SECONDS)
            direct = run_moves(fleet, [Step(MODEL.name, "a", "b")], workdir, args.clients, routed=False)
    steps = len(routed.marks)
    print(f"{args.moves} moves of {MODEL.name} between two CPU-only Triton servers, then one scale-out and one "
          f"scale-in ({steps} steps, {routed.moving[1] - routed.moving[0]:.1f} s); {args.clients} clients through HAProxy")
    print(f"{'':<34} {'requests':>8} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8}")
    print(_row(f"steady state ({STEADY_SECONDS:g} s, no move)", routed.steady()))
    print(_row("during the moves", routed.during_moves()))
    print(f"HAProxy retries {routed.retries['wretr']}, redispatches {routed.retries['wredis']}")
    print(_row("one move, clients on the source", direct.during_moves()))
    answered = Counter(f"{a.status} {a.error}" for a in direct.failures())
    if answered:
        print("  what Triton answered once the model was unloaded: "
              + "; ".join(f"{n} x {what}" for what, n in answered.most_common(2)))
    for problem in problems(routed):
        print(f"PROBLEM: {problem}")
    return 1 if problems(routed) else 0


if __name__ == "__main__":
    sys.exit(main())
