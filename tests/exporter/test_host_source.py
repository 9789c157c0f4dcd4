"""The host source follows a server's process: a killed one is gone (even as a zombie), a restarted one is found."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from gpupack.measurement import SourceError
from gpupack.measurement.host import TREE_REFRESH_SECONDS, HostSource
from gpupack.servers import ServerConfig
from gpupack.timing import wait_until


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def sleeper(processes: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    processes.append(subprocess.Popen(["sleep", "60"]))
    return processes[-1]


def test_a_killed_server_left_a_zombie_is_gone_and_its_restart_is_found_by_its_port(
    processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    first = sleeper(processes)
    now = [0.0]
    found: list[int] = []
    source = HostSource(ServerConfig("a", "http://127.0.0.1:8000", pid=first.pid), find_pid=lambda port: found[0],
                        memory_limit=lambda pid: None, host_memory_bytes=lambda: 2**30, clock=lambda: now[0])
    assert source.read().server_pid == first.pid
    os.kill(first.pid, signal.SIGKILL)  # not reaped: a zombie keeps its PID and start time, and no memory
    _wait_for_zombie(first.pid)
    with pytest.raises(SourceError, match=f"tritonserver \\(pid {first.pid}\\) is gone"):
        source.read()

    restarted = sleeper(processes)
    found.append(restarted.pid)
    now[0] += TREE_REFRESH_SECONDS
    assert source.read().server_pid == restarted.pid


def _wait_for_zombie(pid: int) -> None:
    wait_until(lambda: Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z", 5, "a zombie")
