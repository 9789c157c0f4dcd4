"""A live fleet for the deployment tests: two real Triton servers, one under steady requests, and
the gpupack exporter, rules engine and scheduler started through the ``gpupack`` CLI as deploy/
runs them. The scheduler moves one model from the first server to the second soon after it starts,
so that its move counters carry a real move.

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
from gpupack.triton.launcher import free_port
from tests.deploy.promstack import run_process

SERVER, SPARE_SERVER = "triton-a", "triton-b"
LOADED_MODEL, IDLE_MODEL = "busy", "small"
# Violations are only exported while they last: limits every loaded model breaks keep two up on
# SERVER's device, one per severity, so that alert routing can be checked too.
VIOLATED_POLICIES = f"""
policies:
  - name: memory-tiny
    resource: gpu_memory
    max: 1MiB
    severity: warning
    selector: {{devices: ["cpu:{SERVER}"]}}
  - name: memory-tiny-critical
    resource: gpu_memory
    max: 2MiB
    severity: critical
    selector: {{devices: ["cpu:{SERVER}"]}}
"""
# For the scheduler, in a rules engine of its own: it plans under every capacity policy it is
# given, and none can meet the limits above. Measured by the exporter, a server weighs ~37 MiB,
# LOADED_MODEL ~57 MiB and IDLE_MODEL ~89 MiB with their stubs: all three (~183 MiB) break 150 MiB;
# IDLE_MODEL moved to the spare server leaves ~94 and ~126 MiB.
REBALANCED_POLICIES = f"""
policies:
  - name: memory-rebalance
    resource: gpu_memory
    max: 150MiB
    action: rebalance
  - name: {LOADED_MODEL}-stays
    selector: {{models: [{LOADED_MODEL}]}}
    pin: {{devices: ["cpu:{SERVER}"]}}
"""
NOT_BUILT = {
    "exporter": "'gpupack exporter' (issue 3) does not take --listen yet",
    "rules": "'gpupack rules run' (issue 4) does not take --listen yet",
    "rebalance": "'gpupack rules run' (issues 4, 5) does not take --apply yet",
}


@dataclass
class LiveFleet:
    server: TritonServer
    spare_server: TritonServer
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
        spare = stack.enter_context(TritonServer(model_repository, name=SPARE_SERVER,
                                                 installation=triton_installation,
                                                 log_path=workdir / f"{SPARE_SERVER}.log"))
        stop = threading.Event()
        load = threading.Thread(target=_send_requests, args=(server, stop), daemon=True)
        load.start()
        stack.callback(load.join, 5)
        stack.callback(stop.set)

        policies = workdir / "policies.yaml"
        policies.write_text(VIOLATED_POLICIES)
        fleet = LiveFleet(server, spare, policies, running={"triton"}, scrape_configs=[{
            "job_name": "triton",
            "static_configs": [{"targets": [s.metrics_url.removeprefix("http://").removesuffix("/metrics")],
                                "labels": {"server": s.name}} for s in (server, spare)],
        }])
        servers = [f"--server={s.name}={s.http_url}" for s in (server, spare)]
        if cli_takes(["exporter"], "--listen"):
            exporter = stack.enter_context(_gpupack_daemon(
                ["exporter", "--backend=host", *servers, f"--state-dir={workdir / 'state'}"], workdir, "exporter"))
            fleet.scrape_configs.append({"job_name": "gpupack-exporter", "static_configs": [{"targets": [exporter]}]})
            fleet.running.add("exporter")
            if cli_takes(["rules", "run"], "--listen"):
                rules = stack.enter_context(_gpupack_daemon(
                    ["rules", "run", f"--policies={policies}", f"--exporter-url=http://{exporter}", "--interval=1s"],
                    workdir, "rules"))
                fleet.scrape_configs.append({"job_name": "gpupack-rules", "static_configs": [{"targets": [rules]}]})
                fleet.running.add("rules")
            if cli_takes(["rules", "run"], "--apply"):
                rebalanced = workdir / "rebalanced-policies.yaml"
                rebalanced.write_text(REBALANCED_POLICIES)
                scheduler = stack.enter_context(_gpupack_daemon(
                    ["rules", "run", f"--policies={rebalanced}", f"--exporter-url=http://{exporter}", "--interval=1s",
                     *servers, f"--state-dir={workdir / 'scheduler'}", "--drain=0.2s", "--apply"],
                    workdir, "scheduler"))
                fleet.scrape_configs.append({"job_name": "gpupack-scheduler",
                                             "static_configs": [{"targets": [scheduler]}]})
                fleet.running.add("rebalance")
        yield fleet
