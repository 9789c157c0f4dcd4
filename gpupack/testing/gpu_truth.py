"""What the GPU check measures gpupack against, and the machine it runs on.

:class:`DeviceTruth` reads NVML and ``nvidia-smi`` directly, not through gpupack's sources.
:func:`find_libpython` finds the library the Python-backend stub embeds. :func:`hidden_modules_site`
makes a dry run import only what the GPU machine would have.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

MIB = 2**20

# Import names of what the GPU machine already has that gpupack may touch (its image holds more:
# /work/.library/device/KINDS.md); everything else must come from the wheel folder.
DEVICE_MODULES = frozenset({
    "torch", "cupy", "pynvml", "psutil", "prometheus_client", "yaml", "requests", "urllib3", "idna", "certifi",
    "charset_normalizer", "grpc", "google", "numpy", "ml_dtypes", "packaging", "six", "typing_extensions",
    "matplotlib", "setuptools", "pkg_resources",
})


def find_libpython() -> Path | None:
    """``libpython3.X.so.1.0`` of this interpreter, wherever its build or distribution put it."""
    name = f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    directories = [sysconfig.get_config_var("LIBDIR"), f"{sys.base_prefix}/lib", f"{sys.base_prefix}/lib64",
                   "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/lib", "/usr/lib"]
    for directory in directories:
        if directory and (Path(directory) / name).is_file():
            return Path(directory) / name
    try:
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in cache.splitlines():
        if line.strip().startswith(name) and "=>" in line:
            return Path(line.split("=>", 1)[1].strip())
    return None


class DeviceTruth:
    """NVML and nvidia-smi, read directly."""

    def __init__(self) -> None:
        import pynvml  # noqa: PLC0415 - only on the GPU machine

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def process_memory_bytes(self) -> dict[int, int]:
        """NVML's compute processes on every GPU: PID -> its GPU memory."""
        memory: dict[int, int] = {}
        for handle in self._handles:
            for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.usedGpuMemory is not None:
                    memory[process.pid] = memory.get(process.pid, 0) + int(process.usedGpuMemory)
        return memory

    def process_memory(self, pid: int) -> int | None:
        return self.process_memory_bytes().get(pid)

    def device_memory_used_bytes(self) -> int:
        return sum(int(self._nvml.nvmlDeviceGetMemoryInfo(h).used) for h in self._handles)

    def smi_memory_used_bytes(self) -> dict[str, int]:
        """``nvidia-smi``'s memory used per GPU UUID (it reports whole MiB)."""
        text = subprocess.run(["nvidia-smi", "--query-gpu=uuid,memory.used", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
        used = {}
        for line in text.splitlines():
            if "," in line:
                uuid, mib = (part.strip() for part in line.split(",", 1))
                used[uuid] = int(float(mib) * MIB)
        return used

    def facts(self) -> dict[str, str]:
        text = lambda value: value.decode() if isinstance(value, bytes) else str(value)  # noqa: E731
        return {"driver": text(self._nvml.nvmlSystemGetDriverVersion()),
                "gpus": ", ".join(text(self._nvml.nvmlDeviceGetName(h)) for h in self._handles)}


_HIDER = '''"""Written by gpupack's GPU check (dry run): only what the GPU machine has can be imported."""
import sys

_ALLOWED = {allowed!r}


class _OnlyTheDevicesModules:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in _ALLOWED or top in sys.stdlib_module_names or top.startswith("_"):
            return None
        raise ModuleNotFoundError(f"No module named {{top!r}} (not on the GPU machine nor in its wheel folder)",
                                  name=top)


sys.meta_path.insert(0, _OnlyTheDevicesModules())
'''


def hidden_modules_site(directory: Path, site: Path) -> Path:
    """A folder whose ``sitecustomize`` hides every module neither the GPU machine nor the wheel
    folder installed at ``site`` provides; put it first on PYTHONPATH."""
    bundled = set()
    for entry in site.iterdir():
        if entry.name.endswith((".dist-info", ".libs", ".data")) or entry.name in ("bin", "__pycache__"):
            continue
        bundled.add(entry.name.split(".")[0])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_HIDER.format(allowed=sorted(DEVICE_MODULES | bundled)))
    return directory
