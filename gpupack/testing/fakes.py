"""Small fakes of our own boundaries: a pynvml module and a Triton client."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

GIB = 2**30


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    used_bytes: int = 10 * GIB
    total_bytes: int = 80 * GIB
    util_percent: int = 40
    bandwidth_percent: int = 20
    processes: dict[int, int] = field(default_factory=dict)  # pid -> bytes
    sm_percent: dict[int, int] = field(default_factory=dict)
    not_supported: set[str] = field(default_factory=set)  # pynvml function names
    lost: bool = False


def fake_pynvml(gpus: list[FakeGpu], *, driver_loaded: bool = True) -> SimpleNamespace:
    """A stand-in for the pynvml module with the real exception classes."""

    def call(function: str, handle: int, value: Any) -> Any:
        gpu = gpus[handle]
        if gpu.lost:
            raise pynvml.NVMLError_GpuIsLost(pynvml.NVML_ERROR_GPU_IS_LOST)
        if function in gpu.not_supported:
            raise pynvml.NVMLError_NotSupported(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value(gpu)

    def init() -> None:
        if not driver_loaded:
            raise pynvml.NVMLError_DriverNotLoaded(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    return SimpleNamespace(
        NVMLError=pynvml.NVMLError,
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: call("nvmlDeviceGetUUID", h, lambda g: g.uuid),
        nvmlDeviceGetName=lambda h: call("nvmlDeviceGetName", h, lambda g: g.name),
        nvmlDeviceGetMemoryInfo=lambda h: call("nvmlDeviceGetMemoryInfo", h,
                                               lambda g: SimpleNamespace(used=g.used_bytes, total=g.total_bytes)),
        nvmlDeviceGetUtilizationRates=lambda h: call("nvmlDeviceGetUtilizationRates", h,
                                                     lambda g: SimpleNamespace(gpu=g.util_percent, memory=g.bandwidth_percent)),
        nvmlDeviceGetPowerUsage=lambda h: call("nvmlDeviceGetPowerUsage", h, lambda g: 300_000),
        nvmlDeviceGetTemperature=lambda h, sensor: call("nvmlDeviceGetTemperature", h, lambda g: 55),
        nvmlDeviceGetMigMode=lambda h: call("nvmlDeviceGetMigMode", h, lambda g: (0, 0)),
        nvmlDeviceGetComputeRunningProcesses=lambda h: call(
            "nvmlDeviceGetComputeRunningProcesses", h,
            lambda g: [SimpleNamespace(pid=pid, usedGpuMemory=size) for pid, size in g.processes.items()]),
        nvmlDeviceGetProcessUtilization=lambda h, since: call(
            "nvmlDeviceGetProcessUtilization", h,
            lambda g: [SimpleNamespace(pid=pid, smUtil=p, memUtil=0, timeStamp=since + 1) for pid, p in g.sm_percent.items()]),
    )


class FakeTritonClient:
    """Answers like a Triton server's HTTP API; ``down`` makes every call fail like a refused connection.

    Change a model's answers by replacing its entry in ``models``, not by editing nested dicts in
    place: a real client hands out a new document per answer, and the source compares answers."""

    def __init__(self, models: dict[str, dict[str, Any]] | None = None) -> None:
        self.models = models or {}  # name -> {"config": {...}, "stats": {...}}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("[Errno 111] Connection refused")

    def repository_index(self) -> list[dict]:
        self._check()
        return [{"name": name, "version": "1", "state": "READY"} for name in self.models]

    def model_config(self, model: str, version: str) -> dict:
        self._check()
        return self.models[model].get("config", {})

    def statistics(self) -> list[dict]:
        self._check()
        return [{"name": name, "version": "1", **m.get("stats", {})} for name, m in self.models.items()]

    def metrics_text(self) -> str | None:
        self._check()
        return None
