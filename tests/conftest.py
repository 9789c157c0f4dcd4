"""Shared fixtures: real tritonserver processes over sample models with known footprints.

One installation and one model repository per session; servers are per test (cheap: ~1 s) or
per module when a suite only reads from them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from gpupack.testing import (
    SampleModel,
    TritonInstallation,
    TritonServer,
    find_tritonserver,
    write_model_repository,
)
from gpupack.errors import TritonNotFoundError

MIB = 2**20

# Footprints the suites check attribution against.
SAMPLE_MODELS = [
    SampleModel("small", 48 * MIB),
    SampleModel("medium", 96 * MIB),
    SampleModel("large", 160 * MIB),
    SampleModel("spiky", 64 * MIB, spike_factor=3.0, spike_seconds=0.3),
    SampleModel("busy", 16 * MIB, compute_seconds=0.01),
    SampleModel("empty", 0),  # a stub with nothing allocated: the per-process baseline
    SampleModel("broken", 0, fail_to_load=True),
]


@pytest.fixture(scope="session")
def triton_installation() -> TritonInstallation:
    try:
        return find_tritonserver()
    except TritonNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_repository(tmp_path_factory.mktemp("models"), SAMPLE_MODELS)


@pytest.fixture
def start_triton(
    triton_installation: TritonInstallation, model_repository: Path, tmp_path: Path
) -> Iterator[Callable[..., TritonServer]]:
    """Factory: ``start_triton(name="a", models=["small"])`` -> a ready server, stopped after the test."""
    servers: list[TritonServer] = []

    def start(name: str = "triton", models: tuple[str, ...] | list[str] = (), repository: Path | None = None) -> TritonServer:
        server = TritonServer(
            repository or model_repository,
            name=name,
            installation=triton_installation,
            log_path=tmp_path / f"{name}.log",
        )
        servers.append(server)
        server.start()
        for model in models:
            server.load_model(model)
        return server

    yield start
    for server in servers:
        server.stop()


# Raised before any model loads, so the backend stubs inherit it: other processes on a shared test
# machine would otherwise take the core as they please, and the budget would not be the server's.
_ONE_CORE_NICENESS = -10


@contextlib.contextmanager
def held_to_one_core(installation: TritonInstallation, models: list[SampleModel], name: str,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A server (and its models) held to one core: a device whose capacity the models share, where
    models that keep their budgets alone can break them together."""
    repository = write_model_repository(tmp_path_factory.mktemp(f"{name}-models"), models)
    server = TritonServer(repository, name=name, installation=installation, cpus={max(os.sched_getaffinity(0))},
                          log_path=tmp_path_factory.mktemp("logs") / f"{name}.log")
    with server.start():
        with contextlib.suppress(PermissionError):  # not root: the core is shared as it comes
            os.setpriority(os.PRIO_PROCESS, server.pid, _ONE_CORE_NICENESS)
        yield server


# Two 160 MiB models: on one 448 MiB device both together (with a ~64 MiB server) break an 80%
# policy, either alone does not. The rebalancing suites move one of them to an empty server.
CROWDED_DEVICE_BYTES = 448 * MIB
CROWDING_MODELS = [SampleModel("large-a", 160 * MIB), SampleModel("large-b", 160 * MIB)]
CROWDING_PROFILE = """\
server_baseline: {peak_gpu_memory_bytes: 64MiB}
models:
  - {model: large-a, peak_gpu_memory_bytes: 160MiB}
  - {model: large-b, peak_gpu_memory_bytes: 160MiB}
"""
REBALANCE_AT_80_PERCENT = "policies:\n  - name: gpu-memory-80\n    resource: gpu_memory\n    max: 80%\n    action: rebalance\n"


@pytest.fixture
def start_crowded_fleet(
    start_triton: Callable[..., TritonServer], tmp_path: Path
) -> Callable[[str, str], tuple[TritonServer, TritonServer]]:
    """Factory: ``start_crowded_fleet("a", "b")`` -> server a holding both large models, server b empty."""
    repository = write_model_repository(tmp_path / "crowding-models", CROWDING_MODELS)

    def start(crowded: str, empty: str) -> tuple[TritonServer, TritonServer]:
        return (start_triton(name=crowded, models=[m.name for m in CROWDING_MODELS], repository=repository),
                start_triton(name=empty, repository=repository))

    return start


@pytest.fixture
def triton_server(start_triton: Callable[..., TritonServer]) -> TritonServer:
    return start_triton()


# What a test needs besides Python, read off the test itself so that no marker has to be remembered;
# `make test-fast` deselects all four. Every fixture that starts a tritonserver (``start_triton``,
# ``triton_server``, ``start_crowded_fleet``, ``crowded_pair``, ``live_fleet`` ...) stands on
# ``triton_installation``, and ``fixturenames`` holds what a test requests through other fixtures
# too. A module whose text starts a server or runs one of the binaries has all its tests marked.
TRITON_FIXTURE = "triton_installation"
WORDS_NEEDING = {
    "triton": ("TritonServer(", "triton_fleet("),
    "prometheus": ("promtool", "run_prometheus(", "run_alertmanager("),
    "container": ("podman",),
}
FOLDERS_NEEDING = {"containers": "container", "gpu": "gpu"}


def _needs(item: pytest.Item, module_text: dict[Path, str]) -> set[str]:
    path = Path(str(item.path))
    if path not in module_text:
        module_text[path] = path.read_text()
    needs = {marker for marker, words in WORDS_NEEDING.items() if any(w in module_text[path] for w in words)}
    if TRITON_FIXTURE in getattr(item, "fixturenames", ()):
        needs.add("triton")
    tests = Path(__file__).parent
    folder = path.relative_to(tests).parts[0] if tests in path.parents else ""
    if folder in FOLDERS_NEEDING:
        needs.add(FOLDERS_NEEDING[folder])
    return needs


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    module_text: dict[Path, str] = {}
    for item in items:
        for marker in sorted(_needs(item, module_text) - {m.name for m in item.iter_markers()}):
            item.add_marker(marker)
    if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia/version").exists():
        return
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU and driver")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
