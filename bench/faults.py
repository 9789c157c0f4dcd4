"""Fault injection on a live closed loop: is any model lost, and how long until the fleet is whole?

Each scenario starts the loop as an operator runs it (two CPU-only Triton servers, the exporter
and `gpupack rules run --apply` as processes, read from one gpupack.yaml), waits for the move the
80% policy asks for (server a holds two 160 MiB models on a 448 MiB device; one goes to server b),
injects a fault at a phase the audit log names, and then asks Triton directly until every model
is ready on exactly one server (nothing lost, no duplicate left) and no run is open.

    .venv/bin/python bench/faults.py                  # every scenario once
    .venv/bin/python bench/faults.py --runs 5 --scenario target-killed-during-drain

prints one line per scenario: runs, models lost (not served again within the bound) and the
time to converge, counted from the fault, or from the server's return where a server was killed.
The test suite (tests/faults/) runs each scenario once through the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import yaml

from gpupack.scheduler.rebalance.audit import read_audit
from gpupack.servers import ServerConfig
from gpupack.testing import SampleModel, TritonInstallation, TritonServer, find_tritonserver, write_model_repository
from gpupack.timing import WaitTimeout, wait_until
from gpupack.triton.control import TritonControl, TritonControlError
from gpupack.triton.launcher import free_port

MIB = 2**20
MODELS = (SampleModel("large-a", 160 * MIB), SampleModel("large-b", 160 * MIB))
DEVICE_BUDGET = "448MiB"
POLICIES = {"policies": [{"name": "gpu-memory-80", "resource": "gpu_memory", "max": "80%", "action": "rebalance"}]}
DRAIN = "2s"
CONVERGE_BOUND_SECONDS = 60.0


class Loop:
    """Servers ``a`` (both models) and ``b`` (empty), an exporter and a rules engine that acts."""

    def __init__(self, workdir: Path, installation: TritonInstallation) -> None:
        self.workdir = workdir
        repository = write_model_repository(workdir / "models", list(MODELS))
        self.servers = {name: TritonServer(repository, name=name, installation=installation,
                                           log_path=workdir / "logs" / f"triton-{name}.log") for name in ("a", "b")}
        self.audit_path = workdir / "state" / "scheduler" / "audit.jsonl"
        self.policies_path = workdir / "policies.yaml"
        self.engines: list[subprocess.Popen[bytes]] = []
        self.exporter: subprocess.Popen[bytes] | None = None

    def start(self) -> "Loop":
        for server in self.servers.values():
            server.launch()
        for server in self.servers.values():
            server.wait_ready()
        for model in MODELS:
            self.servers["a"].load_model(model.name)
        self.policies_path.write_text(yaml.safe_dump(POLICIES))
        self.config_path = self.workdir / "gpupack.yaml"
        exporter_url = f"http://127.0.0.1:{free_port()}"
        self.config_path.write_text(yaml.safe_dump({
            "exporter": {"listen": exporter_url.removeprefix("http://"), "backend": ["host"], "sample_hz": 10,
                         "peak_window": "1m", "state_dir": str(self.workdir / "state" / "exporter"),
                         "servers": [{"name": s.name, "url": s.http_url, "metrics_url": s.metrics_url,
                                      "memory_budget": DEVICE_BUDGET} for s in self.servers.values()]},
            "rules": {"policies": str(self.policies_path), "exporter_url": exporter_url, "interval": "1s",
                      "servers": [{"name": s.name, "url": s.http_url} for s in self.servers.values()]},
            "rebalance": {"state_dir": str(self.workdir / "state" / "scheduler"), "drain": DRAIN,
                          "cooldown": "1m", "step_timeout": "20s"},
        }))
        self.exporter = self._spawn("exporter", "exporter")
        self.start_engine()
        return self

    def _spawn(self, log_name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / "logs" / f"{log_name}.log", "ab")  # noqa: SIM115 - lives with the process
        return subprocess.Popen([sys.executable, "-m", "gpupack", "--config", str(self.config_path), *args],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def start_engine(self) -> subprocess.Popen[bytes]:
        engine = self._spawn(f"rules-{len(self.engines)}", "rules", "run", "--apply",
                             "--listen", f"127.0.0.1:{free_port()}")
        self.engines.append(engine)
        return engine

    def stop(self) -> None:
        for process in [*self.engines, self.exporter]:
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGCONT)
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for server in self.servers.values():
            server.stop()

    # -- observing ------------------------------------------------------------------------------

    def events(self) -> list[dict]:
        try:
            return read_audit(self.audit_path)
        except ValueError:  # a line being written
            return []

    def wait_event(self, name: str, timeout_seconds: float = 60.0) -> dict:
        def found() -> dict | None:
            return next((e for e in self.events() if e["event"] == name), None)

        return wait_until(found, timeout_seconds, f"the audit log's {name}", interval_seconds=0.02)

    def copies(self) -> dict[str, int]:
        """Model -> servers that have it ready, asking Triton directly; a silent server has none."""
        counts = {m.name: 0 for m in MODELS}
        for server in self.servers.values():
            try:
                ready = TritonControl(ServerConfig(server.name, server.http_url), 2.0).ready_models()
            except TritonControlError:
                continue
            for model in ready:
                counts[model] = counts.get(model, 0) + 1
        return counts

    def whole(self) -> bool:
        events = [e["event"] for e in self.events() if e["event"] in ("run_started", "run_finished")]
        run_open = bool(events) and events[-1] == "run_started"
        return not run_open and all(n == 1 for n in self.copies().values())

    def wait_whole(self, since: float, bound_seconds: float = CONVERGE_BOUND_SECONDS) -> float:
        """Seconds from ``since`` until the fleet is whole and stays so for three reads in a row."""
        steady = 0
        whole_since = None
        deadline = since + bound_seconds
        while time.monotonic() < deadline:
            if self.whole():
                whole_since = whole_since or time.monotonic()
                steady += 1
                if steady == 3:
                    return whole_since - since
            else:
                steady, whole_since = 0, None
            time.sleep(0.3)
        raise WaitTimeout(f"the fleet was not whole within {bound_seconds:.0f}s: copies {self.copies()}")

    def moved(self) -> bool:
        return len(TritonControl(ServerConfig("b", self.servers["b"].http_url), 2.0).ready_models()) == 1

    # -- faults ---------------------------------------------------------------------------------

    def kill_9(self, name: str) -> None:
        server = self.servers[name]
        os.killpg(server.pid, signal.SIGKILL)
        assert server.process is not None
        server.process.wait(timeout=10)

    def crash_and_return(self, name: str, down_seconds: float = 1.0) -> float:
        """kill -9, then a supervisor's restart on the same ports: it comes back empty."""
        self.kill_9(name)
        time.sleep(down_seconds)
        self.servers[name].restart()
        return time.monotonic()


@dataclass(frozen=True)
class Scenario:
    name: str
    inject: Callable[[Loop], float]  # returns the moment convergence is counted from
    moves_anyway: bool = False  # the move the policy asks for must still happen


def _target_killed_at(event: str, delay_seconds: float = 0.0) -> Callable[[Loop], float]:
    def inject(loop: Loop) -> float:
        loop.wait_event(event)
        time.sleep(delay_seconds)
        return loop.crash_and_return("b")

    return inject


def _source_killed(loop: Loop) -> float:
    loop.wait_event("target_ready")
    return loop.crash_and_return("a")


def _engine_killed(loop: Loop) -> float:
    loop.wait_event("target_ready")
    os.killpg(loop.engines[-1].pid, signal.SIGKILL)
    loop.engines[-1].wait()
    time.sleep(1.0)
    loop.start_engine()
    return time.monotonic()


def _exporter_stopped(loop: Loop) -> float:
    loop.wait_event("step_started")
    assert loop.exporter is not None
    os.killpg(loop.exporter.pid, signal.SIGSTOP)
    fault = time.monotonic()
    time.sleep(8.0)
    os.killpg(loop.exporter.pid, signal.SIGCONT)
    return fault


def _server_restarted_empty(loop: Loop) -> float:
    loop.wait_event("run_finished")
    loop.wait_whole(time.monotonic())
    return loop.crash_and_return("b")


def _two_engines(loop: Loop) -> float:
    loop.start_engine()
    return time.monotonic()


def _bad_policy_edit(loop: Loop) -> float:
    loop.wait_event("step_started")
    loop.policies_path.write_text("policies: [{name: broken, resource: gpu_memory, max: 80\n")
    return time.monotonic()


def _unsatisfiable_policy_edit(loop: Loop) -> float:
    # Before the first evaluation: large-a pinned to a server that is not in the fleet.
    loop.policies_path.write_text(yaml.safe_dump({"policies": [
        {"name": "large-a-on-gpu-servers", "selector": {"models": ["large-a"]}, "pin": {"servers": ["gpu-0"]},
         "action": "rebalance"},
        *POLICIES["policies"],
    ]}))
    return time.monotonic()


SCENARIOS = (
    Scenario("target-killed-at-step-started", _target_killed_at("step_started")),
    Scenario("target-killed-at-target-ready", _target_killed_at("target_ready")),
    Scenario("target-killed-during-drain", _target_killed_at("target_ready", 1.0)),
    Scenario("source-killed", _source_killed),
    Scenario("engine-killed-and-restarted", _engine_killed),
    Scenario("exporter-stopped", _exporter_stopped),
    Scenario("server-restarted-empty", _server_restarted_empty),
    Scenario("two-engines", _two_engines, moves_anyway=True),
    Scenario("bad-policy-edit", _bad_policy_edit),
    Scenario("unsatisfiable-policy-edit", _unsatisfiable_policy_edit, moves_anyway=True),
)


@contextlib.contextmanager
def running_loop(workdir: Path, installation: TritonInstallation) -> Iterator[Loop]:
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    loop = Loop(workdir, installation)
    try:
        yield loop.start()
    finally:
        loop.stop()


@dataclass(frozen=True)
class Outcome:
    seconds: float | None  # to converge; None when the fleet was not whole within the bound
    lost: tuple[str, ...] = ()  # models served nowhere at the bound
    duplicated: tuple[str, ...] = ()  # models left on two servers at the bound
    error: str = ""


def run_scenario(scenario: Scenario, workdir: Path, installation: TritonInstallation) -> Outcome:
    with running_loop(workdir, installation) as loop:
        since = scenario.inject(loop)
        try:
            seconds = loop.wait_whole(since)
            if scenario.moves_anyway:
                wait_until(loop.moved, CONVERGE_BOUND_SECONDS, "the move the 80% policy asks for",
                           interval_seconds=0.3)
                seconds = max(seconds, loop.wait_whole(since))
        except WaitTimeout as e:
            copies = loop.copies()
            return Outcome(None, tuple(m for m, n in copies.items() if n == 0),
                           tuple(m for m, n in copies.items() if n > 1), str(e))
        return Outcome(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, metavar="N", help="runs of each scenario (default: 1)")
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS], metavar="NAME",
                        help="only this scenario (repeat; default: all)")
    args = parser.parse_args()
    installation = find_tritonserver()
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    print(f"{'scenario':<32} {'runs':>4} {'models lost':>11} {'converged in (median / max)':>28}")
    for scenario in chosen:
        times, lost = [], 0
        for run in range(args.runs):
            with tempfile.TemporaryDirectory(prefix=f"gpupack-faults-{scenario.name}-") as workdir:
                outcome = run_scenario(scenario, Path(workdir), installation)
            lost += len(outcome.lost)
            if outcome.seconds is None:
                print(f"  run {run + 1}: {outcome.error}", file=sys.stderr)
            else:
                times.append(outcome.seconds)
        converged = f"{statistics.median(times):.1f} s / {max(times):.1f} s" if times else "-"
        if len(times) < args.runs:
            converged += f" ({args.runs - len(times)} not within {CONVERGE_BOUND_SECONDS:.0f} s)"
        print(f"{scenario.name:<32} {args.runs:>4} {lost:>11} {converged:>28}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
