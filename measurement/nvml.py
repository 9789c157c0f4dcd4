"""The one door to the NVIDIA driver: every pynvml call goes through :meth:`NvmlDoor.query`.

Initialisation is lazy, and a missing library or driver, an unsupported field or a lost GPU are
normal events: the call answers a default, the event is counted, and the rest keeps working
(the shape of nvitop's ``libnvml.nvmlQuery``). Nothing above this module knows pynvml's exceptions.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Mapping

import pynvml

log = logging.getLogger(__name__)

_UNAVAILABLE = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded", "NVMLError_NoPermission")


class NvmlDoor:
    def __init__(self, nvml: ModuleType = pynvml) -> None:
        self._nvml = nvml
        self._initialised: bool | None = None
        self.skipped: Counter[str] = Counter()  # NVML error name -> times a call answered its default
        self._logged: set[tuple[str, str]] = set()

    def available(self) -> bool:
        if self._initialised is None:
            try:
                self._nvml.nvmlInit()
                self._initialised = True
            except self._nvml.NVMLError as e:
                self._count("nvmlInit", e)
                self._initialised = False
        return self._initialised

    def query(self, function: str, *args: Any, default: Any = None, expected: tuple[str, ...] = ()) -> Any:
        """Call ``pynvml.<function>(*args)``; on an NVML error answer ``default``.

        ``expected`` names errors that are an answer, not a failure (e.g. NotFound for "no samples
        since the last call"): those are not counted.
        """
        if not self.available():
            return default
        try:
            return getattr(self._nvml, function)(*args)
        except self._nvml.NVMLError as e:
            if type(e).__name__ not in expected:
                self._count(function, e)
            return default

    def shutdown(self) -> None:
        if self._initialised:
            self._initialised = None
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as e:
                self._count("nvmlShutdown", e)

    def _count(self, function: str, error: Exception) -> None:
        name = type(error).__name__
        self.skipped[name] += 1
        if (function, name) not in self._logged:
            self._logged.add((function, name))
            level = logging.WARNING if name in _UNAVAILABLE or function == "nvmlInit" else logging.INFO
            log.log(level, "NVML %s: %s (skipped; counted in gpupack_collect_errors_total)", function, error)


@dataclass(frozen=True)
class GpuReading:
    """One GPU or MIG instance. ``None`` means the driver could not tell; it is never exported."""

    device: str  # GPU-… or MIG-… UUID
    kind: str  # gpu or mig
    name: str
    index: int
    parent: str | None = None  # the GPU a MIG instance lives on
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_ratio: float | None = None
    memory_bandwidth_utilization_ratio: float | None = None
    power_watts: float | None = None
    temperature_celsius: float | None = None
    process_memory_bytes: Mapping[int, int] = field(default_factory=dict)
    process_sm_ratio: Mapping[int, float] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSource:
    def __init__(self, door: NvmlDoor | None = None, clock: Callable[[], float] = time.time) -> None:
        self.door = door or NvmlDoor()
        self._clock = clock
        self._last_sample_us: dict[str, int] = {}

    def read(self) -> tuple[GpuReading, ...]:
        q = self.door.query
        if not self.door.available():
            return ()
        readings: list[GpuReading] = []
        for index in range(q("nvmlDeviceGetCount", default=0)):
            handle = q("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                continue
            gpu = self._read_one(handle, index, "gpu", None)
            if gpu is None:
                continue
            readings.append(gpu)
            mig_mode = q("nvmlDeviceGetMigMode", handle, default=(0, 0), expected=("NVMLError_NotSupported",))
            if mig_mode and mig_mode[0] == 1:
                for slot in range(q("nvmlDeviceGetMaxMigDeviceCount", handle, default=0)):
                    mig = q("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot, expected=("NVMLError_NotFound",))
                    if mig is not None:
                        reading = self._read_one(mig, slot, "mig", gpu.device)
                        if reading is not None:
                            readings.append(reading)
        return tuple(readings)

    def _read_one(self, handle: Any, index: int, kind: str, parent: str | None) -> GpuReading | None:
        q = self.door.query
        uuid = q("nvmlDeviceGetUUID", handle)
        if uuid is None:  # a lost GPU answers nothing: skip it whole
            return None
        uuid = _text(uuid)
        memory = q("nvmlDeviceGetMemoryInfo", handle)
        rates = q("nvmlDeviceGetUtilizationRates", handle)
        power_mw = q("nvmlDeviceGetPowerUsage", handle)
        temperature = q("nvmlDeviceGetTemperature", handle, 0) if kind == "gpu" else None  # 0: NVML_TEMPERATURE_GPU
        processes = q("nvmlDeviceGetComputeRunningProcesses", handle, default=[])
        process_memory = {p.pid: int(p.usedGpuMemory) for p in processes if p.usedGpuMemory is not None}
        return GpuReading(
            device=uuid,
            kind=kind,
            name=_text(q("nvmlDeviceGetName", handle, default="unknown")),
            index=index,
            parent=parent,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            utilization_ratio=rates.gpu / 100.0 if rates is not None else None,
            memory_bandwidth_utilization_ratio=rates.memory / 100.0 if rates is not None else None,
            power_watts=power_mw / 1000.0 if power_mw is not None else None,
            temperature_celsius=float(temperature) if temperature is not None else None,
            process_memory_bytes=process_memory,
            process_sm_ratio=self._process_utilization(handle, uuid),
        )

    def _process_utilization(self, handle: Any, uuid: str) -> dict[int, float]:
        """SM share per PID since the previous call; NotFound means no samples since then."""
        since_us = self._last_sample_us.get(uuid, int((self._clock() - 1.0) * 1e6))
        samples = self.door.query("nvmlDeviceGetProcessUtilization", handle, since_us, default=[],
                                  expected=("NVMLError_NotFound",))
        ratios: dict[int, float] = {}
        for sample in samples:
            ratios[sample.pid] = max(ratios.get(sample.pid, 0.0), sample.smUtil / 100.0)
            since_us = max(since_us, int(sample.timeStamp))
        self._last_sample_us[uuid] = since_us
        return ratios
