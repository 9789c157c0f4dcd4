"""Real Prometheus and Alertmanager processes on free loopback ports, for the deployment tests.

Each runs in its own process group with its own temporary storage and is always stopped by the
context manager, so a failing test leaves nothing running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
import requests
import yaml

from gpupack.timing import WaitTimeout, wait_until
from gpupack.triton.launcher import free_port

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def require_binary(path_or_name: str) -> str:
    found = shutil.which(path_or_name)
    if found is None:
        pytest.skip(f"{path_or_name} is not installed (Debian packages prometheus / prometheus-alertmanager)")
    return found


def _wait_ready(process: subprocess.Popen[bytes], name: str, ready_url: str, log_path: Path,
                timeout_seconds: float) -> None:
    """Until ``ready_url`` answers 200; a process that exits or stays unready fails with its log's end."""

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited during start-up:\n{log_path.read_text()[-2000:]}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(ready_url, timeout=1).status_code == 200
        return False

    try:
        wait_until(ready, timeout_seconds, f"{name} answering {ready_url}")
    except WaitTimeout as e:
        raise RuntimeError(f"{e}:\n{log_path.read_text()[-2000:]}") from e


@contextlib.contextmanager
def run_process(args: Sequence[str], log_path: Path, ready_url: str, timeout_seconds: float = 30.0) -> Iterator[None]:
    """Run ``args`` until the block ends, once ``ready_url`` answers 200; output goes to ``log_path``."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed argv
            list(args), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_ready(process, args[0], ready_url, log_path, timeout_seconds)
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; raises with Prometheus's own message when the expression is rejected."""
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        response = requests.get(f"{self.url}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10)
        response.raise_for_status()
        return response.json()["data"]

    def active_targets(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/api/v1/targets", timeout=10)
        response.raise_for_status()
        return response.json()["data"]["activeTargets"]


@contextlib.contextmanager
def run_prometheus(
    config: dict[str, Any], workdir: Path, rule_files: dict[str, Any] | None = None
) -> Iterator[Prometheus]:
    """Start Prometheus with ``config``; ``rule_files`` (name -> rules document) are written beside it."""
    binary = require_binary(PROMETHEUS)
    workdir.mkdir(parents=True, exist_ok=True)
    for name, document in (rule_files or {}).items():
        (workdir / name).write_text(yaml.safe_dump(document))
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    args = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    url = f"http://127.0.0.1:{port}"
    with run_process(args, workdir / "prometheus.log", f"{url}/-/ready"):
        yield Prometheus(url)


@contextlib.contextmanager
def run_alertmanager(config_path: Path, workdir: Path) -> Iterator[str]:
    """Start a single, unclustered Alertmanager; yields its base URL."""
    binary = require_binary(ALERTMANAGER)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        binary,
        f"--config.file={config_path}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: one instance, nothing else bound
    ]
    url = f"http://127.0.0.1:{port}"
    with run_process(args, workdir / "alertmanager.log", f"{url}/-/ready"):
        yield url
