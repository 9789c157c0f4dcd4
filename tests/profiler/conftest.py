"""Model repositories for the profiler's suites.

A model's truth is its backend process's own high-water mark (``VmHWM``, watched with
:class:`gpupack.testing.highwater.BackendWatch`), exact for a one-process model: the stub's own
~45 MiB included, so small footprints are checked as tightly as large ones.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpupack.testing import SampleModel, write_model_repository

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


def gpupack(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpupack", *args], capture_output=True, text=True, timeout=timeout)
