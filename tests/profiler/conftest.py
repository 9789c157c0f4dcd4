"""Model repositories for the profiler's suites, a fresh server over them, and ``gpupack`` run (and
interrupted) as a user runs it.

A model's truth is its backend process's own high-water mark (``VmHWM``, watched with
:class:`gpupack.testing.highwater.BackendWatch`), exact for a one-process model: the stub's own
~45 MiB included, so small footprints are checked as tightly as large ones.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from gpupack.testing import SampleModel, TritonServer, write_model_repository

MIB = 2**20

PROFILED = [
    SampleModel("model-600", 600 * MIB),
    SampleModel("model-650", 650 * MIB, compute_seconds=0.001),
    SampleModel("model-700", 700 * MIB),
]
SMALL = SampleModel("small", 32 * MIB)
SPIKY = SampleModel("spiky", 64 * MIB, spike_factor=4.0, spike_seconds=0.2)
BROKEN = SampleModel("broken", 0, fail_to_load=True)
# For the configuration search: a fixed cost per batch and a small one per item, so batching pays.
SEARCHED = [
    SampleModel("batchy", 32 * MIB, compute_seconds=0.004, item_compute_seconds=0.0004),
    SampleModel("light", 16 * MIB, compute_seconds=0.001, item_compute_seconds=0.0002),
]
IDLE = SampleModel("idle", 0)  # the stub alone: where the server's own growth would show most


@pytest.fixture(scope="session")
def profile_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_repository(tmp_path_factory.mktemp("profile-models"),
                                  [*PROFILED, SMALL, SPIKY, BROKEN, IDLE, *SEARCHED])


@pytest.fixture
def server(start_triton: Callable[..., TritonServer], profile_repository: Path) -> TritonServer:
    """A fresh server over the profiler's repository with nothing loaded: the profiler loads what it measures."""
    return start_triton(name="profiled", repository=profile_repository)


def gpupack(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpupack", *args], capture_output=True, text=True, timeout=timeout)


def _sigint_as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_gpupack(*args: str) -> subprocess.Popen[str]:
    """``gpupack ARGS`` running, its output piped. Ctrl-C reaches it as from a terminal even where this
    test run ignores SIGINT (a shell's background job does, and a child would inherit that)."""
    return subprocess.Popen([sys.executable, "-m", "gpupack", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_sigint_as_from_a_terminal)


def interrupted(process: subprocess.Popen[str], measured: Callable[[subprocess.Popen[str]], object],
                interrupt: Callable[[subprocess.Popen[str]], object], timeout_seconds: float = 120) -> str:
    """A running ``gpupack profile``: once ``measured(process)`` returns, ``interrupt(process)`` (a
    signal to it, a server killed under it), then its end; its stderr. Killed if anything fails, so
    a failing test leaves no profiler running."""
    try:
        measured(process)
        interrupt(process)
        _, stderr = process.communicate(timeout=timeout_seconds)
    finally:
        process.kill()
    return stderr


def first_point(process: subprocess.Popen[str]) -> list[str]:
    """A running profiler's stderr lines up to its first measured point (``[1/...``)."""
    seen = []
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        if line.startswith("[1/"):
            return seen
    raise AssertionError("the profiler ended before measuring a point:\n" + "".join(seen))
