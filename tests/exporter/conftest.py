"""Start an exporter in-process against real Triton servers. Reusable by other suites:

    from tests.exporter.conftest import running_exporter  # or use the fixture below

``running_exporter(servers, ...)`` is a context manager yielding a started :class:`Exporter` on a
free loopback port with a fast sample rate (``triton_poll_seconds`` to poll Triton faster too).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
import requests

from gpupack.exporter.daemon import TRITON_POLL_SECONDS, Exporter
from gpupack.exporter.families import ALL_FAMILIES, FamilySelection
from gpupack.exporter.settings import ExporterSettings, ServerConfig
from gpupack.testing import TritonServer
from gpupack.testing.tritonserver import free_port


def server_config(server: TritonServer, **overrides: Any) -> ServerConfig:
    """A config for a harness server: its PID is known, its /metrics port too."""
    values: dict[str, Any] = {"name": server.name, "url": server.http_url, "pid": server.pid,
                              "metrics_url": server.metrics_url}
    values.update(overrides)
    return ServerConfig(**values)


def exporter_settings(servers: Sequence[ServerConfig], state_dir: Path, *, sample_hz: float = 20.0,
                      window_seconds: float = 7 * 86400.0, backends: tuple[str, ...] = ("host",),
                      families: FamilySelection = ALL_FAMILIES) -> ExporterSettings:
    return ExporterSettings(
        listen_host="127.0.0.1",
        listen_port=free_port(),
        servers=tuple(servers),
        backends=backends,
        sample_interval_seconds=1.0 / sample_hz,
        peak_window_seconds=window_seconds,
        state_dir=state_dir,
        families=families,
    )


@contextlib.contextmanager
def running_exporter(servers: Sequence[TritonServer | ServerConfig], state_dir: Path, *,
                     triton_poll_seconds: float = TRITON_POLL_SECONDS, **kwargs: Any) -> Iterator[Exporter]:
    configs = [s if isinstance(s, ServerConfig) else server_config(s) for s in servers]
    exporter = Exporter(exporter_settings(configs, state_dir, **kwargs), triton_poll_seconds=triton_poll_seconds).start()
    try:
        deadline = time.monotonic() + 10
        while exporter.holder.get().last_collect_timestamp_seconds is None:
            assert time.monotonic() < deadline, "the exporter took no sample in 10 s"
            time.sleep(0.05)
        yield exporter
    finally:
        exporter.shutdown()


def wait_until(predicate: Callable[[], Any], timeout_seconds: float = 15.0, interval_seconds: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail the test."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_seconds:.0f}s")
        time.sleep(interval_seconds)


def peaks(url: str) -> dict:
    return requests.get(f"{url}/api/v1/peaks", timeout=5).json()


def model_entry(document: dict, model: str, server: str | None = None) -> dict | None:
    for entry in document["models"]:
        if entry["model"] == model and (server is None or entry["server"] == server):
            return entry
    return None


@pytest.fixture
def exporter_factory(tmp_path: Path) -> Iterator[Callable[..., Exporter]]:
    """``exporter_factory([server, ...], sample_hz=20)`` -> a started exporter, stopped after the test."""
    stack = contextlib.ExitStack()

    def start(servers: Sequence[TritonServer | ServerConfig], **kwargs: Any) -> Exporter:
        return stack.enter_context(running_exporter(servers, tmp_path / "state", **kwargs))

    with stack:
        yield start
