"""The exporter's NVML backend on a real GPU: a model that allocates known GPU memory.

Needs an NVIDIA GPU, its driver, and CuPy or PyTorch in the interpreter the Python-backend stub
uses (the sample model allocates with whichever it finds). Skipped without a GPU.
"""

from __future__ import annotations

import pytest

from gpupack.testing import SampleModel, TritonServer, write_model_repository
from tests.exporter.conftest import model_entry, peaks, running_exporter, wait_until

pytestmark = [pytest.mark.gpu, pytest.mark.triton]
MIB = 2**20
FOOTPRINT_BYTES = 512 * MIB


def _device_used_bytes(uuid: str) -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByUUID(uuid)).used
    finally:
        pynvml.nvmlShutdown()


def test_gpu_model_memory_is_within_10_percent_of_what_unloading_frees(triton_installation, tmp_path):
    repository = write_model_repository(tmp_path / "models", [SampleModel("gpu_model", FOOTPRINT_BYTES, instance_kind="KIND_GPU")])
    with TritonServer(repository, name="g", installation=triton_installation, log_path=tmp_path / "g.log") as server:
        server.load_model("gpu_model")
        with running_exporter([server], tmp_path / "state", backends=("nvml",)) as exporter:
            entry = wait_until(lambda: (e := model_entry(peaks(exporter.url), "gpu_model")) and "current" in e and e)
            document = peaks(exporter.url)
        memory, uuid = entry["current"]["gpu_memory"], entry["device"]
        before = _device_used_bytes(uuid)
        server.unload_model("gpu_model")
        wait_until(lambda: before - _device_used_bytes(uuid) > FOOTPRINT_BYTES * 0.9, timeout_seconds=30)
        freed = before - _device_used_bytes(uuid)
        print(f"gpu_model: attributed {memory / MIB:.0f} MiB, unloading freed {freed / MIB:.0f} MiB "
              f"(buffer {FOOTPRINT_BYTES / MIB:.0f} MiB + CUDA context), source {entry['source']}, device {uuid}")
        assert entry["source"] == "process"
        assert uuid.startswith(("GPU-", "MIG-"))
        assert abs(memory - freed) <= 0.10 * freed
        device = next(d for d in document["devices"] if d["device"] == uuid)
        assert device["capacity"]["gpu_memory"] > memory and device["kind"] in ("gpu", "mig")
