"""Start an exporter in-process against real Triton servers. Reusable by other suites:

    from tests.exporter.conftest import running_exporter  # or use the fixture below

``running_exporter(servers, ...)`` is a context manager yielding a started :class:`Exporter` on a
free loopback port with a fast sample rate (``triton_poll_seconds`` to poll Triton faster too);
``crowded_pair`` is the crowded fleet of ``tests/conftest.py`` with an exporter watching it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import psutil
import pytest
import requests

from gpupack import timing
from gpupack.exporter.daemon import TRITON_POLL_SECONDS, Exporter
from gpupack.exporter.families import ALL_FAMILIES, FamilySelection
from gpupack.exporter.settings import ExporterSettings
from gpupack.servers import ServerConfig
from gpupack.testing import TritonServer
from gpupack.triton.launcher import free_port

from tests.conftest import CROWDED_DEVICE_BYTES

T = TypeVar("T")


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
        timing.wait_until(lambda: exporter.holder.get().last_collect_timestamp_seconds is not None, 10,
                          "the exporter's first sample", interval_seconds=0.05)
        yield exporter
    finally:
        exporter.shutdown()


def wait_until(predicate: Callable[[], T], timeout_seconds: float = 15.0, what: str = "the condition") -> T:
    """:func:`gpupack.timing.wait_until` with the patience the exporter's suites need by default."""
    return timing.wait_until(predicate, timeout_seconds, what)


def peaks(url: str) -> dict:
    return requests.get(f"{url}/api/v1/peaks", timeout=5).json()


def model_entry(document: dict, model: str, server: str | None = None) -> dict | None:
    for entry in document["models"]:
        if entry["model"] == model and (server is None or entry["server"] == server):
            return entry
    return None


def measured_now(url: str, model: str) -> dict | None:
    """The model's entry once the exporter measures its memory as loaded now; None before."""
    entry = model_entry(peaks(url), model)
    return entry if entry and entry.get("loaded") and "gpu_memory" in entry.get("current", {}) else None


def tree_rss_bytes(pid: int) -> int:
    """What a server and every process under it hold: the ground truth an unload's freeing is read from."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total


@pytest.fixture
def exporter_factory(tmp_path: Path) -> Iterator[Callable[..., Exporter]]:
    """``exporter_factory([server, ...], sample_hz=20)`` -> a started exporter, stopped after the test."""
    stack = contextlib.ExitStack()

    def start(servers: Sequence[TritonServer | ServerConfig], **kwargs: Any) -> Exporter:
        return stack.enter_context(running_exporter(servers, tmp_path / "state", **kwargs))

    with stack:
        yield start


CrowdedPair = tuple[TritonServer, TritonServer, Exporter]


@pytest.fixture
def crowded_pair(start_crowded_fleet: Callable[[str, str], tuple[TritonServer, TritonServer]],
                 exporter_factory: Callable[..., Exporter]) -> Callable[..., CrowdedPair]:
    """Factory: ``crowded_pair(window_seconds=6)`` -> t0 holding both large models and t1 empty, each a
    device of ``CROWDED_DEVICE_BYTES``, and an exporter watching both (``exporter_factory``'s options)."""

    def start(**kwargs: Any) -> CrowdedPair:
        t0, t1 = start_crowded_fleet("t0", "t1")
        configs = [server_config(server, memory_budget_bytes=CROWDED_DEVICE_BYTES) for server in (t0, t1)]
        return t0, t1, exporter_factory(configs, **kwargs)

    return start
