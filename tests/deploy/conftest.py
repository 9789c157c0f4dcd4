"""A live fleet for the deployment tests: one real Triton server under steady requests, and the
gpupack exporter and rules engine started through the ``gpupack`` CLI as deploy/ runs them.

Components that are not built yet are left out and named, so tests that need them skip clearly.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import tritonclient.http as triton_http

from gpupack.testing import TritonInstallation, TritonServer
from gpupack.testing.tritonserver import free_port
from tests.deploy.promstack import run_process

SERVER = "triton-a"
LOADED_MODEL, IDLE_MODEL = "busy", "small"
# Violations are only exported while they last: limits every loaded model breaks keep two up,
# one per severity, so that alert routing can be checked too.
VIOLATED_POLICIES = """
policies:
  - name: memory-tiny
    resource: gpu_memory
    max: 1MiB
    severity: warning
  - name: memory-tiny-critical
    resource: gpu_memory
    max: 2MiB
    severity: critical
"""
NOT_BUILT = {
    "exporter": "'gpupack exporter' (issue 3) does not take --listen yet",
    "rules": "'gpupack rules run' (issue 4) does not take --listen yet",
}


@dataclass
class LiveFleet:
    server: TritonServer
    policies: Path
    scrape_configs: list[dict[str, Any]] = field(default_factory=list)
    running: set[str] = field(default_factory=set)

    def require(self, component: str) -> None:
        if component not in self.running:
            pytest.skip(NOT_BUILT[component])


def cli_takes(args: list[str], flag: str) -> bool:
    result = subprocess.run([sys.executable, "-m", "gpupack", *args, "--help"],
                            capture_output=True, text=True, timeout=60)
    return result.returncode == 0 and flag in result.stdout


def _send_requests(server: TritonServer, stop: threading.Event) -> None:
    client = triton_http.InferenceServerClient(server.http_address)
    request = triton_http.InferInput("INPUT0", [1, 16], "FP32")
    request.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    while not stop.wait(0.05):
        with contextlib.suppress(Exception):  # the server stops before this thread at teardown
            client.infer(LOADED_MODEL, [request])


@contextlib.contextmanager
def _gpupack_daemon(args: list[str], workdir: Path, name: str) -> Iterator[str]:
    port = free_port()
    target = f"127.0.0.1:{port}"
    with run_process([sys.executable, "-m", "gpupack", *args, f"--listen={target}"], workdir / f"{name}.log",
                     f"http://{target}/metrics", timeout_seconds=60):
        yield target


@pytest.fixture(scope="package")
def live_fleet(triton_installation: TritonInstallation, model_repository: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFleet]:
    workdir = tmp_path_factory.mktemp("live-fleet")
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(TritonServer(model_repository, name=SERVER, installation=triton_installation,
                                                  log_path=workdir / f"{SERVER}.log"))
        server.load_model(LOADED_MODEL)
        server.load_model(IDLE_MODEL)
        stop = threading.Event()
        load = threading.Thread(target=_send_requests, args=(server, stop), daemon=True)
        load.start()
        stack.callback(load.join, 5)
        stack.callback(stop.set)

        policies = workdir / "policies.yaml"
        policies.write_text(VIOLATED_POLICIES)
        fleet = LiveFleet(server, policies, running={"triton"}, scrape_configs=[{
            "job_name": "triton",
            "static_configs": [{"targets": [server.metrics_url.removeprefix("http://").removesuffix("/metrics")],
                                "labels": {"server": SERVER}}],
        }])
        if cli_takes(["exporter"], "--listen"):
            exporter = stack.enter_context(_gpupack_daemon(
                ["exporter", "--backend=host", f"--server={SERVER}={server.http_url}",
                 f"--state-dir={workdir / 'state'}"], workdir, "exporter"))
            fleet.scrape_configs.append({"job_name": "gpupack-exporter", "static_configs": [{"targets": [exporter]}]})
            fleet.running.add("exporter")
            if cli_takes(["rules", "run"], "--listen"):
                rules = stack.enter_context(_gpupack_daemon(
                    ["rules", "run", f"--policies={policies}", f"--exporter-url=http://{exporter}", "--interval=1s"],
                    workdir, "rules"))
                fleet.scrape_configs.append({"job_name": "gpupack-rules", "static_configs": [{"targets": [rules]}]})
                fleet.running.add("rules")
        yield fleet
