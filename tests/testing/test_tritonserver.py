"""The real-Triton harness every suite stands on: start, load, unload, measure, always clean up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest
import requests

from gpupack.testing import (
    SampleModel,
    TritonServer,
    TritonStartError,
    find_tritonserver,
    triton_fleet,
    write_model_repository,
)
from gpupack.timing import wait_until
from gpupack.triton.control import TritonControlError
from gpupack.triton.processes import backend_processes, parse_stub_cmdline

MIB = 2**20


def backend_rss_bytes(server: TritonServer, model: str) -> int:
    (process,) = [p for p in backend_processes(server.pid) if p.model == model]
    return psutil.Process(process.pid).memory_info().rss


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(text in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


def test_server_loads_and_unloads_a_sample_model(start_triton):
    server = start_triton(name="lifecycle")
    assert server.ready_models() == []
    server.load_model("small")
    assert server.ready_models() == ["small"]
    response = requests.post(
        f"{server.http_url}/v2/models/small/infer",
        json={"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2.0] * 16
    server.unload_model("small")
    assert server.ready_models() == []


def test_a_model_sized_n_mib_raises_its_backend_process_by_n_mib(start_triton):
    server = start_triton(name="footprint", models=["empty", "medium", "large"])
    baseline = backend_rss_bytes(server, "empty")
    for model, footprint in (("medium", 96 * MIB), ("large", 160 * MIB)):
        raised_by = backend_rss_bytes(server, model) - baseline
        assert raised_by == pytest.approx(footprint, rel=0.10), f"{model}: {raised_by / MIB:.1f} MiB"


def test_backend_processes_are_identified_by_model_and_version(start_triton):
    server = start_triton(name="identify", models=["small", "medium"])
    found = {(p.model, p.version, p.instance) for p in backend_processes(server.pid)}
    assert found == {("small", "1", "small_0_0"), ("medium", "1", "medium_0_0")}


def test_stub_command_lines_are_parsed_and_others_ignored():
    stub = "/opt/backends/python/triton_python_backend_stub /m/resnet/3/model.py shm 1 1 42 /opt/backends/python 336 resnet_0_1 DEFAULT"
    assert parse_stub_cmdline(stub.split(), pid=7).model == "resnet"
    assert parse_stub_cmdline(stub.split()).version == "3"
    assert parse_stub_cmdline(stub.split()).instance == "resnet_0_1"
    assert parse_stub_cmdline(["/usr/bin/python3", "/m/resnet/3/model.py"]) is None


def test_fleet_starts_servers_on_distinct_ports_and_stops_them_all(model_repository, triton_installation):
    with triton_fleet(model_repository, ["a", "b"], installation=triton_installation) as servers:
        assert len({s.http_port for s in servers} | {s.grpc_port for s in servers} | {s.metrics_port for s in servers}) == 6
        assert all(requests.get(f"{s.http_url}/v2/health/ready", timeout=5).ok for s in servers)
        pids = [s.pid for s in servers]
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_a_server_that_loses_the_race_for_its_port_starts_on_fresh_ones(model_repository, triton_installation,
                                                                        monkeypatch):
    """CI saw another process bind a port between our check and Triton's bind; the start must not fail."""
    import socket

    from gpupack.triton import launcher

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    real_free_port = launcher.free_port
    monkeypatch.setattr(launcher, "free_port", lambda: next(ports, None) or real_free_port())
    try:
        with TritonServer(model_repository, name="raced", installation=triton_installation) as server:
            assert server.http_port != taken
            assert requests.get(f"{server.http_url}/v2/health/ready", timeout=5).ok
    finally:
        squatter.close()


def test_free_ports_lie_below_the_range_the_kernel_gives_outgoing_connections():
    from gpupack.triton.launcher import _ephemeral_range, free_port

    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(20)]
    assert all(port < low for port in ports) and len(set(ports)) == 20


def test_a_failed_load_is_reported_with_tritons_reason(start_triton):
    server = start_triton(name="failing")
    with pytest.raises(TritonControlError, match="failing: loading broken: .*fail_to_load"):
        server.load_model("broken")


def test_start_failure_shows_the_server_log(tmp_path, triton_installation):
    server = TritonServer(tmp_path / "no-such-repository", name="bad", installation=triton_installation,
                          log_path=tmp_path / "bad.log")
    with pytest.raises(TritonStartError, match="exited during start-up"):
        server.start(timeout_seconds=30)


def test_explicit_binary_that_does_not_exist_is_a_clear_error():
    with pytest.raises(Exception, match="TRITONSERVER=/nowhere/tritonserver is not a file"):
        find_tritonserver({"TRITONSERVER": "/nowhere/tritonserver"})


def test_killing_the_test_run_leaves_no_server_or_stub_behind(tmp_path, triton_installation):
    """A run killed with SIGKILL runs no finalizers: the servers must die with it by themselves.
    (``triton_installation``: skipped, not failed, where there is no tritonserver.)"""
    marker_repository = write_model_repository(tmp_path / "killed-run-models", [SampleModel("small", 8 * MIB)])
    script = textwrap.dedent(f"""
        import time
        from gpupack.testing import TritonServer
        server = TritonServer({str(marker_repository)!r}, name="orphan-check").start()
        server.load_model("small")
        print("loaded", flush=True)
        time.sleep(600)
    """)
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline().strip() == "loaded"
        spawned = processes_mentioning(str(marker_repository))
        assert any("tritonserver" in " ".join(p.cmdline()) for p in spawned)
        assert any("triton_python_backend_stub" in " ".join(p.cmdline()) for p in spawned)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        wait_until(lambda: not processes_mentioning(str(marker_repository)), 20,
                   "the killed run's server and stub ending by themselves", interval_seconds=0.2)
    finally:
        run.kill()
