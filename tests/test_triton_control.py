"""The one door to Triton: every failure below it, Triton's or the network's, is a TritonControlError."""

from __future__ import annotations

import socket
import threading
from typing import Iterator

import pytest

from gpupack.triton.launcher import free_port
from gpupack.triton.control import TritonControl, TritonControlError
from gpupack.servers import ServerConfig


@pytest.fixture
def hangs_up_mid_answer() -> Iterator[str]:
    """Answers every request with a header promising 100 bytes, sends one, and hangs up."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopped = threading.Event()

    def serve() -> None:
        while not stopped.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stopped.set()
    thread.join()
    listener.close()


def test_a_server_that_hangs_up_mid_answer_is_named_with_what_was_asked(hangs_up_mid_answer: str) -> None:
    control = TritonControl(ServerConfig("flaky", hangs_up_mid_answer), timeout_seconds=5)

    with pytest.raises(TritonControlError, match=r"^flaky \(http://127\.0\.0\.1:\d+\): reading the repository index: "):
        control.ready_models()


def test_a_server_that_is_not_there_is_named_and_not_live() -> None:
    control = TritonControl(ServerConfig("gone", f"http://127.0.0.1:{free_port()}"), timeout_seconds=5)

    with pytest.raises(TritonControlError, match=r"^gone \(http://127\.0\.0\.1:\d+\): unloading m: "):
        control.unload("m")
    assert not control.is_live()


def test_a_server_that_does_not_answer_is_not_a_model_that_unloaded(tmp_path) -> None:
    """Silence says nothing about the model: waiting for it to be gone must fail, not succeed."""
    from gpupack.scheduler.rebalance.audit import AuditLog
    from gpupack.scheduler.rebalance.executor import ServerPerDeviceExecutor
    from gpupack.scheduler.rebalance.step_mechanics import StepContext

    gone = ServerConfig("gone", f"http://127.0.0.1:{free_port()}")
    control = TritonControl(gone, timeout_seconds=5)
    with pytest.raises(TritonControlError, match=r"^gone \(http://127\.0\.0\.1:\d+\): checking m: "):
        control.is_ready("m")
    executor = ServerPerDeviceExecutor({"cpu:gone": gone}, StepContext(AuditLog(tmp_path / "audit.jsonl")))
    with pytest.raises(TritonControlError, match="checking m"):
        executor.wait_gone(control, "m", deadline=float("inf"))
