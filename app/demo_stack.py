"""The processes the demo starts beside its Triton fleet (the exporter, the rules engine and the
router), where each serves, the config file that names them all, and stopping them in order.

Apart from :mod:`gpupack.app.demo`, which tells the story (the naive placement judged, the fleet
rebalanced, judged again), so that how the demo's children live and die (each in a session of its
own, taken down with the demo, stopped in reverse order) is read in one place.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import yaml

from gpupack.errors import GpupackError
from gpupack.router.haproxy_config import SERVER_HEADER
from gpupack.router.launcher import HaproxyProcess, HaproxyStartError, find_haproxy
from gpupack.triton.launcher import TritonServer, die_with_parent, free_port

DEVICE_BUDGET_BYTES = 2**30
DEVICE_BUDGET = "1GiB"  # DEVICE_BUDGET_BYTES as the config file and the planner's flag read it
STOP_GRACE_SECONDS = 4.0  # per gpupack child group, before SIGKILL; Triton's own grace follows (5 s)
POLICY_NAME = "gpu-memory-80"
_SOCKET_PATH_MAX = 107  # bytes in a unix socket's path (sun_path, less its terminating NUL)


class DemoError(GpupackError):
    pass


class DemoStack:
    """The demo's own processes, in start order; the Triton fleet is :func:`triton_fleet`'s to stop."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.exporter_url = f"http://127.0.0.1:{_port(9478)}"
        self.rules_url = f"http://127.0.0.1:{_port(9479)}"
        self.router_url = f"http://127.0.0.1:{_port(8080)}"
        self.router_off = _router_off()  # why there is no router, or "" when there is one
        self.admin_socket = "" if self.router_off else self._admin_socket()
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []  # (who, process), in start order

    def write_config(self, servers: Sequence[TritonServer]) -> Path:
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

    def print_urls(self, servers: Sequence[TritonServer], config_path: Path) -> None:
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

    def _admin_socket(self) -> str:
        """HAProxy's admin socket in the work folder (mode 600: only this user drives the router), or
        its runtime API on loopback where the folder's path is too long for a socket."""
        path = self.workdir / "router" / "admin.sock"
        if len(str(path).encode()) <= _SOCKET_PATH_MAX:
            path.parent.mkdir(parents=True, exist_ok=True)
            return str(path)
        return f"127.0.0.1:{free_port()}"

    def start_router(self, config_path: Path) -> None:
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

    def start(self, name: str, *args: str) -> None:
        """In a session of its own: a terminal's Ctrl-C reaches the demo alone, which stops its
        children in order, and a stop reaches whatever a child started too (its whole group). A
        ``kill -9`` of the demo, which no handler sees, still takes the child with it."""
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        parent_pid = os.getpid()
        process = subprocess.Popen([sys.executable, "-m", "gpupack", *args], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=lambda: die_with_parent(parent_pid))  # noqa: PLW1509 - PDEATHSIG
        self.processes.append(({"rules": "rules engine"}.get(name, name), process))

    def stop(self) -> None:
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

    def check_alive(self) -> None:
        for who, process in self.processes:
            if process.poll() is not None:
                raise DemoError(f"the {who} exited with status {process.returncode}; see {self.workdir / 'logs'}")


def _port(preferred: int) -> int:
    """The documented default when it is free, so Prometheus examples work as printed."""
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def _router_off() -> str:
    """Why the demo runs without a router ("" when haproxy is installed): it still runs, and says so."""
    try:
        find_haproxy()
    except HaproxyStartError as e:
        return f"{e} (the bootstrap installs it)"
    return ""
