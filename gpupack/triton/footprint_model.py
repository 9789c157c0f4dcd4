"""A Triton Python-backend model whose cost is known in advance.

Copied into a model repository as ``<model>/1/model.py`` by ``gpupack.triton.sample_models``; it runs in
Triton's stub, never imported by gpupack. Parameters in ``config.pbtxt`` set the truth that
attribution and peak recording are checked against:

- ``footprint_bytes``: memory held while loaded, per instance (GPU memory on a KIND_GPU instance
  when CuPy or PyTorch is importable, host memory otherwise): each instance is its own stub
  process, so memory grows with ``instance_group.count`` as a real model's weights do;
- ``spike_factor`` / ``spike_seconds``: during each inference, hold footprint x (factor - 1) more
  for that long;
- ``compute_seconds``: CPU time burnt per call of ``execute`` (one batch, however many requests
  Triton's dynamic batcher put in it): the fixed cost of a batch, for utilisation;
- ``item_compute_seconds``: CPU time burnt per batch element on top, so a batch of n costs
  ``compute_seconds + n x item_compute_seconds`` and dynamic batching pays as it does on a real
  model.

The cost is burnt as CPU time of the executing thread, not wall time: instances (separate
processes) run in parallel up to the machine's cores and no further, like a real device.
"""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _parameter(config, key, default):
    entry = config.get("parameters", {}).get(key)
    return type(default)(entry["string_value"]) if entry else default


class _HostMemory:
    def allocate(self, size_bytes):
        # np.ones writes every page, so the memory is resident, not merely reserved.
        return np.ones(int(size_bytes), dtype=np.uint8) if size_bytes > 0 else None


class _GpuMemory:
    def __init__(self, device_id):
        self.device_id = device_id
        try:
            import cupy

            self.allocate = self._cupy(cupy)
        except ImportError:
            import torch

            self.allocate = self._torch(torch)

    def _cupy(self, cupy):
        def allocate(size_bytes):
            if size_bytes <= 0:
                return None
            with cupy.cuda.Device(self.device_id):
                buffer = cupy.ones(int(size_bytes), dtype=cupy.uint8)
                cupy.cuda.runtime.deviceSynchronize()
                return buffer

        return allocate

    def _torch(self, torch):
        def allocate(size_bytes):
            if size_bytes <= 0:
                return None
            buffer = torch.ones(int(size_bytes), dtype=torch.uint8, device=f"cuda:{self.device_id}")
            torch.cuda.synchronize(self.device_id)
            return buffer

        return allocate


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.footprint_bytes = _parameter(config, "footprint_bytes", 0)
        self.spike_factor = _parameter(config, "spike_factor", 1.0)
        self.spike_seconds = _parameter(config, "spike_seconds", 0.0)
        self.compute_seconds = _parameter(config, "compute_seconds", 0.0)
        self.item_compute_seconds = _parameter(config, "item_compute_seconds", 0.0)
        if _parameter(config, "fail_to_load", 0):
            raise pb_utils.TritonModelException("configured with fail_to_load")
        if args.get("model_instance_kind") == "GPU":
            self.memory: _GpuMemory | _HostMemory = _GpuMemory(int(args["model_instance_device_id"]))
        else:
            self.memory = _HostMemory()
        self.resident = self.memory.allocate(self.footprint_bytes)

    def execute(self, requests):
        spike = None
        if self.spike_factor > 1.0 and self.spike_seconds > 0:
            spike = self.memory.allocate(self.footprint_bytes * (self.spike_factor - 1.0))
        started = time.monotonic()
        inputs = [pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy() for request in requests]
        items = sum(values.shape[0] if values.ndim > 1 else 1 for values in inputs)
        cost_seconds = self.compute_seconds + items * self.item_compute_seconds
        cpu_started = time.thread_time()
        while time.thread_time() - cpu_started < cost_seconds:
            pass
        if spike is not None:
            time.sleep(max(0.0, self.spike_seconds - (time.monotonic() - started)))
            del spike
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", values * 2)]) for values in inputs]

    def finalize(self):
        self.resident = None
