"""The CPU-only container stack (deploy/cpu/compose.yaml), built and brought up once per session.

The images are built by ``deploy/podman/stack.sh build`` (what ``make containers`` runs) at the first
test that needs them; podman's layer cache makes a rebuild with unchanged sources take seconds.
Without a working podman every test here is skipped, with the reason. The image sizes, the time to
healthy and the alerts delivered are printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from gpupack import timing

ROOT = Path(__file__).resolve().parents[2]
STACK_SCRIPT = ROOT / "deploy" / "podman" / "stack.sh"
PROJECT = "gpupack-cpu"
BASE_IMAGE = "localhost/gpupack-base:bookworm"
IMAGES = ("localhost/gpupack:latest", "localhost/gpupack-triton:latest", "localhost/gpupack-monitoring:latest")
SERVICES = ("triton-0", "triton-1", "exporter", "rules", "prometheus", "alertmanager")
# deploy/cpu/: Triton's HTTP, gRPC and metrics ports, Prometheus, Alertmanager, exporter, rules engine,
# and the webhook Alertmanager delivers to (deploy/cpu/alertmanager.yml), which the suite serves.
WEBHOOK_PORT = 9097
STACK_PORTS = (8000, 8001, 8002, 8010, 8011, 8012, 9090, 9093, 9478, 9479, WEBHOOK_PORT)
HEALTHY_TIMEOUT_SECONDS = 240.0

MEASURED: dict[str, str] = {}


def environment() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(ROOT / "deploy" / "podman" / "containers.conf"),
            "COMPOSE": str(Path(sys.executable).parent / "podman-compose")}


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=environment())


def stack(*steps: str, timeout: float = 1800) -> None:
    result = subprocess.run(["sh", str(STACK_SCRIPT), *steps], capture_output=True, text=True, timeout=timeout,
                            env=environment())
    if result.returncode != 0:
        pytest.fail(f"stack.sh {' '.join(steps)} failed ({result.returncode}):\n{result.stdout[-3000:]}"
                    f"\n{result.stderr[-6000:]}")


def _podman_unusable() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/bootstrap.sh installs Debian's podman and runc)"
    if not (Path(sys.executable).parent / "podman-compose").exists():
        return "podman-compose is not in this environment (pip install -e '.[test]')"
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60)
    if info.returncode != 0:
        return f"podman does not work here: {(info.stderr.strip().splitlines() or ['?'])[-1]}"
    if podman("image", "exists", BASE_IMAGE).returncode != 0 and shutil.which("mmdebstrap") is None:
        return f"neither {BASE_IMAGE} nor mmdebstrap (Debian package) to build it is here"
    return None


@pytest.fixture(scope="session")
def images() -> dict[str, int]:
    """Every image built (once per session); their sizes in bytes."""
    reason = _podman_unusable()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    stack("build")
    MEASURED["build"] = f"{time.monotonic() - started:.0f} s (with podman's layer cache as this machine had it)"
    sizes = {image: int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout) for image in
             (BASE_IMAGE, *IMAGES)}
    MEASURED["image sizes"] = ", ".join(f"{image.split('/')[1]} {size / 1e6:.0f} MB" for image, size in sizes.items())
    run = podman("run", "--rm", "--network", "host", IMAGES[0], "--version")
    if run.returncode != 0:
        pytest.skip(f"podman cannot run a container here: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
    return sizes


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Stack:
    containers: dict[str, str]  # service -> container name
    notifications: list[dict[str, Any]] = field(default_factory=list)  # as Alertmanager posted them
    down: bool = False

    def container(self, service: str) -> dict[str, Any]:
        return json.loads(podman("inspect", self.containers[service]).stdout)[0]

    def alerts(self, status: str) -> list[dict[str, Any]]:
        return [a for n in self.notifications for a in n["alerts"] if a["status"] == status]

    def healthy(self, service: str) -> bool:
        return podman("healthcheck", "run", self.containers[service], timeout=30).returncode == 0


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_until(condition: Callable[[], Any], timeout_seconds: float, what: str, every_seconds: float = 1.0) -> Any:
    """:func:`gpupack.timing.wait_until`, where a condition that raises (a service still starting,
    a connection refused) counts as not yet."""

    def holds() -> Any:
        with contextlib.suppress(Exception):
            return condition()
        return None

    return timing.wait_until(holds, timeout_seconds, what, every_seconds)


@pytest.fixture(scope="session")
def running_stack(images: dict[str, int]) -> Iterator[Stack]:
    """deploy/cpu/compose.yaml up and every container healthy; taken down (again) at the end."""
    taken = [port for port in STACK_PORTS if _port_taken(port)]
    if taken:
        pytest.skip(f"the stack's loopback ports {taken} are taken on this machine")
    webhook = ThreadingHTTPServer(("127.0.0.1", WEBHOOK_PORT), _Webhook)
    webhook.received = []  # type: ignore[attr-defined]
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    started = time.monotonic()
    healthy_by = timing.Deadline.after(HEALTHY_TIMEOUT_SECONDS)
    try:
        stack("up", timeout=600)
        listed = podman("ps", "--all", "--filter", f"label=io.podman.compose.project={PROJECT}", "--format", "json")
        containers = {c["Labels"]["com.docker.compose.service"]: c["Names"][0] for c in json.loads(listed.stdout)}
        assert sorted(containers) == sorted(SERVICES)
        running = Stack(containers, webhook.received)  # type: ignore[attr-defined]
        for service in SERVICES:
            wait_until(lambda: running.healthy(service), healthy_by.remaining(), f"{service} healthy",
                       every_seconds=0.5)
        MEASURED["time to healthy"] = f"{time.monotonic() - started:.1f} s from 'up' until all six containers pass their health checks"
        yield running
    finally:
        with contextlib.suppress(BaseException):
            subprocess.run(["sh", str(STACK_SCRIPT), "down"], capture_output=True, timeout=300, env=environment())
        webhook.shutdown()
        webhook.server_close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASURED:
        terminalreporter.section("container stack (deploy/cpu), measured on this machine")
        for name, value in MEASURED.items():
            terminalreporter.write_line(f"{name}: {value}")
