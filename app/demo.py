"""The whole gpupack loop on one machine, no GPU needed.

Real Triton servers stand in for GPUs (one CPU-only server per device, each with a memory
budget); the article's nine models (footprints scaled down 1/20) are loaded two per device at
random, as the article's naive placement does. The exporter measures them, the rules engine finds
the device over the 80% policy, and the scheduler moves models live until the fleet is healthy,
driving HAProxy in front of the fleet so that clients calling the router follow every move (without
haproxy installed the demo runs without a router, and says so). Every part runs as the same command
a user would start, from one config file. Ctrl-C, SIGTERM or SIGHUP stops everything the demo
started, at any point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gpupack.config import ConfigFile
from gpupack.errors import GpupackError
from gpupack.router.haproxy_config import SERVER_HEADER
from gpupack.router.launcher import HaproxyProcess, HaproxyStartError, find_haproxy
from gpupack.timing import WaitTimeout, wait_until
from gpupack.triton.launcher import TritonServer, die_with_parent, free_port, triton_fleet
from gpupack.triton.sample_models import seed_models, write_model_repository
from gpupack.units import counted, format_mib

DEVICE_BUDGET_BYTES = 2**30
DEVICE_BUDGET = "1GiB"  # DEVICE_BUDGET_BYTES as the config file and the planner's flag read it
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_GRACE_SECONDS = 4.0  # per gpupack child group, before SIGKILL; Triton's own grace follows (5 s)
POLICY_NAME = "gpu-memory-80"
_SOCKET_PATH_MAX = 107  # bytes in a unix socket's path (sun_path, less its terminating NUL)
# The article's "two per GPU at random", fixed so that the demo always shows its failure: liver and
# brain tumour share a device (the article's OOM risk) while breast and chest leave one mostly idle.
NAIVE_PLACEMENT = (
    ("segmentation_ct_liver", "segmentation_mri_brain_tumor"),
    ("classification_breast", "classification_chest"),
    ("segmentation_ct_colon_tumor", "segmentation_ct_pancreas"),
    ("segmentation_ct_spleen", "segmentation_mri_hippocampus"),
    ("classification_malaria",),
)


class DemoError(GpupackError):
    pass


class _Stopped(BaseException):
    """A stop signal arrived. A BaseException, as KeyboardInterrupt is, so that no ``except
    Exception`` on the way swallows it and every ``finally`` stops what it started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def _ignore_stop_signals() -> None:
    """While stopping: a second Ctrl-C must not cut the clean-up short and leave servers behind."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true",
                        help="keep the fleet, exporter and rules engine running until Ctrl-C, SIGTERM or "
                             "SIGHUP; the URLs they serve are printed, and written in the work folder's "
                             "gpupack.yaml")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where to put models, config, state and logs (default: a temporary directory)")


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}
    try:
        with _workdir(args.workdir) as workdir:
            return _Demo(workdir.resolve(), keep=args.keep).run()  # the config's paths hold from any folder
    except _Stopped as e:
        print(f"gpupack demo: stopped by {e}; everything it started is stopped", file=sys.stderr)
        return 128 + e.signum  # as a shell reports a command ended by that signal
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix="gpupack-demo-") as temporary:
            yield Path(temporary)


def _port(preferred: int) -> int:
    """The documented default when it is free, so Prometheus examples work as printed."""
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


class _Demo:
    def __init__(self, workdir: Path, keep: bool) -> None:
        self.workdir = workdir
        self.keep = keep
        self.exporter_url = f"http://127.0.0.1:{_port(9478)}"
        self.rules_url = f"http://127.0.0.1:{_port(9479)}"
        self.router_url = f"http://127.0.0.1:{_port(8080)}"
        self.router_off = _router_off()  # why there is no router, or "" when there is one
        self.admin_socket = "" if self.router_off else self._admin_socket()
        self.started = time.monotonic()
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []  # (who, process), in start order

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {text}", flush=True)

    def run(self) -> int:
        models = seed_models()
        repository = write_model_repository(self.workdir / "models", models)
        names = [f"triton-{i}" for i in range(len(NAIVE_PLACEMENT))]
        budget_mib = DEVICE_BUDGET_BYTES // 2**20
        print(f"gpupack demo: {len(names)} CPU-only Triton servers stand in for {len(names)} GPUs of "
              f"{budget_mib} MiB each; the article's nine models, footprints scaled down 1/20.\n")
        self.say(f"starting {len(names)} Triton servers ...")
        try:
            with triton_fleet(repository, names, log_dir=self.workdir / "logs") as servers:
                try:
                    return self._with_fleet(servers)
                finally:
                    _ignore_stop_signals()
                    self._stop_processes()
        finally:
            _ignore_stop_signals()  # a stop during start-up: the fleet's own clean-up runs now

    def _with_fleet(self, servers: list[TritonServer]) -> int:
        self.say("loading two models per device at random, as the article's naive placement does")
        pool = ThreadPoolExecutor(max_workers=len(servers))  # one loader per server
        try:
            list(pool.map(lambda pair: [pair[0].load_model(m) for m in pair[1]], zip(servers, NAIVE_PLACEMENT)))
        finally:
            pool.shutdown(wait=False)  # on a stop, the servers go now; their loads fail with them
        config_path = self._write_config(servers)
        if self.router_off:
            self.say(f"router off: {self.router_off}; clients call each Triton server directly")
        else:
            self._start_router(config_path)
        self.say(f"exporter on {self.exporter_url}  (/metrics, /api/v1/peaks)")
        self._start("exporter", "--config", str(config_path), "exporter")
        self._wait_for_peaks(expected_models=sum(len(group) for group in NAIVE_PLACEMENT))

        print("\nBEFORE: the naive placement, judged against the 80% memory policy")
        before = self._evaluate(config_path)
        self._print_table(before, self._models_by_device())
        if not any(r["status"] == "violated" for r in before):
            raise DemoError("expected the naive placement to violate the 80% policy; it did not")

        self.say(f"rules engine on {self.rules_url}  (/metrics, /api/v1/placement) with policy "
                 f"{POLICY_NAME} (max 80%, action: rebalance): the scheduler moves models live")
        self._start("rules", "--config", str(config_path), "rules", "run", "--apply")
        self._wait_for_rebalance()

        for move in self._moves():
            print(f"  moved {move['model']}: {move['source']} -> {move['target']} "
                  f"(ready on the target {move['overlap_seconds']:.1f}s before leaving the source)")
        print("\nAFTER: the placement the scheduler moved to, judged against the same policy")
        after = self._evaluate(config_path)
        models_by_device = self._models_by_device()
        self._print_table(after, models_by_device)
        healthy = not any(r["status"] != "ok" for r in after)
        self.say(f"fleet {'healthy' if healthy else 'NOT healthy'}: {counted(len(models_by_device), 'device')} in use; "
                 f"every move is in the audit log, {self._audit_log.relative_to(self.workdir)} in the work folder")
        self._print_fewest_devices(config_path)
        self._print_pointers()
        if self.keep:
            self._print_urls(servers, config_path)
            self._serve_until_stopped()
        return 0 if healthy else 1

    def _serve_until_stopped(self) -> None:
        """--keep: the demo has said what it had to; a stop signal now is the expected end, not a failure."""
        try:
            while all(p.poll() is None for _, p in self.processes):
                time.sleep(1)
        except _Stopped as e:
            router = "" if self.router_off else ", the router"
            self.say(f"stopping on {e}: the rules engine, the exporter{router} and the Triton servers")
            return
        self._check_alive()

    def _print_urls(self, servers: Sequence[TritonServer], config_path: Path) -> None:
        shown = config_path.relative_to(Path.cwd()) if config_path.is_relative_to(Path.cwd()) else config_path
        print(f"\nRunning until Ctrl-C, SIGTERM or SIGHUP (--keep); every URL is also in {shown}:")
        for server in servers:
            print(f"  {server.name:<13} {server.http_url}  (Triton HTTP; metrics {server.metrics_url})")
        print(f"  {'exporter':<13} {self.exporter_url}/metrics  {self.exporter_url}/api/v1/peaks")
        print(f"  {'rules engine':<13} {self.rules_url}/metrics  {self.rules_url}/api/v1/placement")
        if self.router_off:
            print(f"  (no router: {self.router_off})")
        else:
            print(f"  {'router':<13} {self.router_url}  (HAProxy: clients call /v2/models/<model>/infer here, wherever "
                  f"the model is; the header {SERVER_HEADER} names the server that answered)")
        print(f"Every subcommand reads the fleet from it: gpupack --config {shown} rules evaluate", flush=True)

    def _write_config(self, servers: Sequence[TritonServer]) -> Path:
        server_entries = [{"name": s.name, "url": s.http_url, "metrics_url": s.metrics_url, "pid": s.pid,
                           "memory_budget": DEVICE_BUDGET} for s in servers]
        policies_path = self.workdir / "policies.yaml"
        policies_path.write_text(yaml.safe_dump({"policies": [
            {"name": POLICY_NAME, "resource": "gpu_memory", "max": "80%", "severity": "critical",
             "action": "rebalance"},
        ]}, sort_keys=False))
        config = {
            "exporter": {"listen": self.exporter_url.removeprefix("http://"), "backend": ["host"],
                         "state_dir": str(self.workdir / "state" / "exporter"), "sample_hz": 5,
                         "servers": server_entries},
            "rules": {"policies": str(policies_path), "exporter_url": self.exporter_url, "interval": "2s",
                      "listen": self.rules_url.removeprefix("http://"),
                      "servers": [{"name": s.name, "url": s.http_url, "metrics_url": s.metrics_url}
                                  for s in servers]},
            "rebalance": {"state_dir": str(self.workdir / "state" / "scheduler"), "drain": "1s", "cooldown": "1m"},
        }
        if not self.router_off:
            config["router"] = {"kind": "haproxy", "listen": self.router_url.removeprefix("http://"),
                                "admin_socket": self.admin_socket}
        path = self.workdir / "gpupack.yaml"
        path.write_text(f"# The fleet gpupack demo runs: its Triton servers (url, metrics_url), the exporter (listen),\n"
                        f"# the rules engine (listen) and the router in front of the servers (listen: where clients\n"
                        f"# connect). Every subcommand reads it: gpupack --config {path} ...\n"
                        + yaml.safe_dump(config, sort_keys=False))
        return path

    def _admin_socket(self) -> str:
        """HAProxy's admin socket in the work folder (mode 600: only this user drives the router), or
        its runtime API on loopback where the folder's path is too long for a socket."""
        path = self.workdir / "router" / "admin.sock"
        if len(str(path).encode()) <= _SOCKET_PATH_MAX:
            path.parent.mkdir(parents=True, exist_ok=True)
            return str(path)
        return f"127.0.0.1:{free_port()}"

    def _start_router(self, config_path: Path) -> None:
        """HAProxy's configuration written by `gpupack router config` from today's placement, as a user
        writes it, then HAProxy on it; the rules engine drives it through each move."""
        router_config = self.workdir / "router" / "haproxy.cfg"
        router_config.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, "-m", "gpupack", "--config", str(config_path), "router", "config",
                                 "--output", str(router_config)], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise DemoError(f"gpupack router config failed: {result.stderr.strip()}")
        router = HaproxyProcess(router_config, self.admin_socket, self.router_url,
                                log_path=self.workdir / "logs" / "router.log")
        try:
            router.start()
        finally:
            if router.process is not None:
                self.processes.append(("router", router.process))  # stopped last: the rules engine drives it
        self.say(f"router on {self.router_url}  (HAProxy in front of the servers: clients call "
                 "/v2/models/<model>/infer there and follow every move)")

    def _start(self, name: str, *args: str) -> None:
        """In a session of its own: a terminal's Ctrl-C reaches the demo alone, which stops its
        children in order, and a stop reaches whatever a child started too (its whole group). A
        ``kill -9`` of the demo, which no handler sees, still takes the child with it."""
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        parent_pid = os.getpid()
        process = subprocess.Popen([sys.executable, "-m", "gpupack", *args], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=lambda: die_with_parent(parent_pid))  # noqa: PLW1509 - PDEATHSIG
        self.processes.append(({"rules": "rules engine"}.get(name, name), process))

    def _stop_processes(self) -> None:
        # The rules engine (a client of the exporter and the router) first, the router last.
        for _, process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _, process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the group: anything it started, even if it is gone
            process.wait()

    def _check_alive(self) -> None:
        for who, process in self.processes:
            if process.poll() is not None:
                raise DemoError(f"the {who} exited with status {process.returncode}; see {self.workdir / 'logs'}")

    def _wait_for_peaks(self, expected_models: int, timeout_seconds: float = 90) -> None:
        def all_measured() -> bool:
            self._check_alive()
            with contextlib.suppress(requests.RequestException, ValueError):
                peaks = requests.get(f"{self.exporter_url}/api/v1/peaks", timeout=2).json()
                loaded = [m for m in peaks.get("models", []) if m.get("loaded") and "gpu_memory" in m.get("peaks", {})]
                return len(loaded) >= expected_models
            return False

        try:
            wait_until(all_measured, timeout_seconds, "the exporter reporting every model", interval_seconds=0.5)
        except WaitTimeout as e:
            raise DemoError(f"the exporter did not report all models within {timeout_seconds:.0f}s") from e
        time.sleep(1)  # a few more samples, so each peak is a maximum and not a first reading
        self.say(f"exporter has peaks for all {expected_models} models")

    def _wait_for_rebalance(self, timeout_seconds: float = 180) -> None:
        reported_moves = 0

        def healthy_after_moves() -> bool:
            nonlocal reported_moves
            self._check_alive()
            samples = self._rules_samples()
            moves = int(sum(s.value for s in samples if s.name == "gpupack_rebalance_moves_total"
                            and s.labels.get("result") == "succeeded"))
            if moves > reported_moves:
                self.say(f"scheduler: {counted(moves, 'model move')} done, each ready on its new device before "
                         "leaving the old one")
                reported_moves = moves
            violated = [s for s in samples if s.name == "gpupack_policy_violation" and s.value == 1]
            evaluated = any(s.name == "gpupack_policy_headroom_ratio" for s in samples)
            return bool(moves and evaluated and not violated)

        try:
            wait_until(healthy_after_moves, timeout_seconds, "the fleet rebalancing", interval_seconds=1.0)
        except WaitTimeout as e:
            raise DemoError(f"the fleet was not rebalanced within {timeout_seconds:.0f}s; "
                            f"see {self.workdir / 'logs'}") from e

    def _rules_samples(self) -> list[Sample]:
        try:
            text = requests.get(f"{self.rules_url}/metrics", timeout=2).text
        except requests.RequestException:
            return []
        return [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def _evaluate(self, config_path: Path) -> list[dict[str, Any]]:
        result = subprocess.run(
            [sys.executable, "-m", "gpupack", "--config", str(config_path), "rules", "evaluate",
             "--format", "json"], capture_output=True, text=True, timeout=60)
        if result.returncode not in (0, 1):
            raise DemoError(f"gpupack rules evaluate failed: {result.stderr.strip()}")
        return [r for r in json.loads(result.stdout)["results"] if r["policy"] == POLICY_NAME]

    @property
    def _audit_log(self) -> Path:
        return self.workdir / "state" / "scheduler" / "audit.jsonl"

    def _moves(self) -> list[dict[str, Any]]:
        """Completed moves from the scheduler's audit log, with how long both copies served."""
        if not self._audit_log.exists():
            return []
        events = [json.loads(line) for line in self._audit_log.read_text().splitlines() if line.strip()]
        ready = {e["step"]: e["time_seconds"] for e in events if e["event"] == "target_ready"}
        return [{**e, "overlap_seconds": e["time_seconds"] - ready[e["step"]]}
                for e in events if e["event"] == "source_unloaded" and e["step"] in ready]

    def _models_by_device(self) -> dict[str, list[str]]:
        """Where models are loaded now, as the exporter sees it."""
        peaks = requests.get(f"{self.exporter_url}/api/v1/peaks", timeout=5).json()
        placement: dict[str, list[str]] = {}
        for entry in peaks["models"]:
            if entry.get("loaded"):
                placement.setdefault(entry["device"], []).append(entry["model"])
        return {device: sorted(models) for device, models in placement.items()}

    def _print_table(self, results: list[dict[str, Any]], models_by_device: dict[str, list[str]]) -> None:
        print(f"  {'device':<16} {'models':<58} {'peak MiB':>9} {'limit MiB':>9} {'use':>5}  status")
        for r in sorted(results, key=lambda r: r["device"]):
            models = ", ".join(models_by_device.get(r["device"], [])) or "-"
            value, limit = r.get("value"), r.get("limit")
            use = f"{value / DEVICE_BUDGET_BYTES:.0%}" if value is not None else "?"
            peak_mib, limit_mib = ("?" if v is None else format_mib(v) for v in (value, limit))
            print(f"  {r['device']:<16} {models:<58} {peak_mib:>9} {limit_mib:>9} {use:>5}  {r['status']}")
        print()

    def _print_fewest_devices(self, config_path: Path) -> None:
        """The article's case study 1 on the measured peaks: how few devices would do."""
        peaks = requests.get(f"{self.exporter_url}/api/v1/peaks", timeout=5).json()
        baseline = max(d.get("server_baseline", {}).get("gpu_memory", 0) for d in peaks["devices"])
        profile = {
            "server_baseline": {"peak_gpu_memory_bytes": int(baseline)},
            "models": [{"model": m["model"], "peak_gpu_memory_bytes": int(m["peaks"]["gpu_memory"])}
                       for m in peaks["models"] if m.get("loaded") and "gpu_memory" in m.get("peaks", {})],
        }
        profile_path = self.workdir / "measured-profile.yaml"
        profile_path.write_text(yaml.safe_dump(profile, sort_keys=False))
        result = subprocess.run(
            [sys.executable, "-m", "gpupack", "plan", "--profile", str(profile_path), "--device-memory",
             DEVICE_BUDGET, "--policies", str(self.workdir / "policies.yaml")],
            capture_output=True, text=True, timeout=120)
        print("\nPLAN: the fewest devices the measured peaks need under the same policy "
              f"(gpupack plan --profile {profile_path.name})")
        print("  " + (result.stdout or result.stderr).strip().replace("\n", "\n  "))

    def _print_pointers(self) -> None:
        print(f"""
Point Prometheus at the exporter and the rules engine:
  scrape_configs:
    - job_name: gpupack-exporter
      static_configs: [{{targets: ["{self.exporter_url.removeprefix('http://')}"]}}]
    - job_name: gpupack-rules
      static_configs: [{{targets: ["{self.rules_url.removeprefix('http://')}"]}}]
Grafana dashboards: grafana/dashboards/*.json (provisioning in grafana/provisioning/);
alert rules: deploy/prometheus/rules/; the full stack: deploy/README.md.""")


def _router_off() -> str:
    """Why the demo runs without a router ("" when haproxy is installed): it still runs, and says so."""
    try:
        find_haproxy()
    except HaproxyStartError as e:
        return f"{e} (the bootstrap installs it)"
    return ""
