"""The CPU-only stack in containers, end to end: Prometheus in its container scrapes the exporter
and rules engine in theirs, a breached policy alerts and is rebalanced away, the containers run as
the Kubernetes manifests say, a wedged process fails its health check, and `down` leaves nothing.

The tests share one stack and run in this order; the last one takes it down.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import yaml

from gpupack.triton.control import TritonControl
from gpupack.servers import ServerConfig
from tests.containers.conftest import MEASURED, PROJECT, ROOT, Stack, podman, stack, wait_until

# The first test builds the images: from nothing (a fresh machine) that takes ~10 minutes on 2 cores.
pytestmark = [pytest.mark.container, pytest.mark.timeout(1500)]

MIB = 2**20
PROMETHEUS = "http://127.0.0.1:9090"
RULES_METRICS = "http://127.0.0.1:9479/metrics"
TRITON = {"triton-0": "http://127.0.0.1:8000", "triton-1": "http://127.0.0.1:8010"}
KUBERNETES = ROOT / "deploy" / "kubernetes"
CAPABILITY_BITS = {"SYS_PTRACE": 19}  # linux/capability.h: the ones the manifests add


def query(promql: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def ready_models(server: str) -> list[str]:
    return sorted(TritonControl(ServerConfig(server, TRITON[server]), 30).ready_models())


def test_prometheus_in_its_container_scrapes_the_exporter_and_rules_engine_in_theirs(running_stack: Stack) -> None:
    up = wait_until(lambda: {r["metric"]["job"] for r in query("up == 1")} >= {"gpupack-exporter", "gpupack-rules"},
                    60, "Prometheus scraping both gpupack targets")
    assert up
    # Attributed to large-a's own backend process: the exporter sees Triton's processes (host PID).
    (series,) = wait_until(lambda: query('gpupack_model_memory_bytes{source="process",model="large-a"}'), 60,
                           "per-model memory with source=process")
    assert series["metric"]["server"] == "triton-0" and series["metric"]["device"] == "cpu:triton-0"
    assert 160 * MIB <= float(series["value"][1]) < 448 * MIB


def _security_context(manifest: str) -> dict[str, Any]:
    pod = yaml.safe_load((KUBERNETES / manifest).read_text())["spec"]["template"]["spec"]
    return pod["containers"][0]["securityContext"] | {"hostPID": pod.get("hostPID", False)}


def _process_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


@pytest.mark.parametrize(("service", "manifest"), [("exporter", "exporter-daemonset.yaml"),
                                                    ("rules", "rules-deployment.yaml")])
def test_containers_run_as_the_kubernetes_manifests_say(running_stack: Stack, service: str, manifest: str) -> None:
    wanted = _security_context(manifest)
    container = running_stack.container(service)
    status = _process_status(container["State"]["Pid"])
    assert int(status["Uid"].split()[1]) == wanted["runAsUser"], f"{service}: effective uid {status['Uid']}"
    if wanted.get("runAsNonRoot"):
        assert wanted["runAsUser"] != 0
    assert container["HostConfig"]["ReadonlyRootfs"] == wanted["readOnlyRootFilesystem"]
    if wanted["capabilities"]["drop"] == ["ALL"]:
        expected = sum(1 << CAPABILITY_BITS[name] for name in wanted["capabilities"].get("add", []))
        assert int(status["CapEff"], 16) == expected, f"{service} has capabilities {status['CapEff']}"
    assert status["NoNewPrivs"] == ("0" if wanted["allowPrivilegeEscalation"] else "1")
    same_pid_namespace = os.readlink(f"/proc/{container['State']['Pid']}/ns/pid") == os.readlink("/proc/self/ns/pid")
    assert same_pid_namespace == wanted["hostPID"]


def test_a_model_breaking_the_80_percent_policy_alerts_is_moved_and_the_violation_clears(running_stack: Stack) -> None:
    assert ready_models("triton-0") == ["large-a"] and ready_models("triton-1") == []
    TritonControl(ServerConfig("triton-0", TRITON["triton-0"]), 120).load("large-b")

    def fired() -> list[dict[str, Any]]:
        return [a for a in running_stack.alerts("firing") if a["labels"]["alertname"] == "GpupackGpuMemory80"]

    (alert, *_) = wait_until(fired, 120, "GpupackGpuMemory80 delivered by Alertmanager to the webhook")
    assert alert["labels"]["device"] == "cpu:triton-0"

    def moved() -> bool:
        body = requests.get(RULES_METRICS, timeout=5).text
        return 'gpupack_rebalance_moves_total{result="succeeded"} 1.0' in body and len(ready_models("triton-1")) == 1

    wait_until(moved, 120, "the rules engine's scheduler moving one model to triton-1")
    assert sorted(ready_models("triton-0") + ready_models("triton-1")) == ["large-a", "large-b"]

    def cleared() -> bool:
        body = requests.get(RULES_METRICS, timeout=5).text
        return ("gpupack_policy_violation{" not in body and not query("ALERTS{alertname='GpupackGpuMemory80'}")
                and any(a["labels"]["alertname"] == "GpupackGpuMemory80" for a in running_stack.alerts("resolved")))

    wait_until(cleared, 240, "the violation clearing, in the rules engine and as a resolved notification")
    MEASURED["alerts delivered"] = (f"{len(running_stack.alerts('firing'))} firing and "
                                    f"{len(running_stack.alerts('resolved'))} resolved, in "
                                    f"{len(running_stack.notifications)} webhook notifications")


@pytest.mark.parametrize("service", ["exporter", "rules"])
def test_a_wedged_process_fails_its_health_check_and_passes_again_when_it_resumes(
    running_stack: Stack, service: str
) -> None:
    pid = running_stack.container(service)["State"]["Pid"]
    assert running_stack.healthy(service)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert not running_stack.healthy(service)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: running_stack.healthy(service), 30, f"{service} healthy again")


def test_down_leaves_no_container_volume_or_process(running_stack: Stack) -> None:
    processes = []
    for service in running_stack.containers:
        main = psutil.Process(running_stack.container(service)["State"]["Pid"])
        processes += [main, *main.children(recursive=True)]
    assert len(processes) > len(running_stack.containers), "Triton's backend stubs should be among them"
    stack("down", timeout=300)
    label = f"label=io.podman.compose.project={PROJECT}"
    assert podman("ps", "--all", "--quiet", "--filter", label).stdout.strip() == ""
    assert podman("volume", "ls", "--quiet", "--filter", label).stdout.strip() == ""
    assert [v for v in podman("volume", "ls", "--quiet").stdout.split() if v.startswith(PROJECT)] == []
    assert [p for p in processes if p.is_running()] == []
