"""A Triton Python-backend model for the GPU check: known GPU memory, GPU time burnt per request.

Copied into a model repository as ``<model>/1/model.py`` by :mod:`gpupack.testing.gpu_check`; it
runs in Triton's stub, never imported by gpupack. On the GPU machine the stub embeds a Python whose
numpy is 2.x while the stub reads arrays through the numpy 1 ABI, so a KIND_GPU instance touches no
numpy array: inputs and outputs pass through DLPack, memory and work are PyTorch's. A KIND_CPU
instance (the dry run, on a machine without a GPU) holds host memory and burns CPU time instead.

Parameters in ``config.pbtxt``: ``footprint_bytes`` (memory held while loaded) and
``compute_seconds`` (device time burnt per request).
"""

import json
import time

import triton_python_backend_utils as pb_utils


def _parameter(config, key, default):
    entry = config.get("parameters", {}).get(key)
    return type(default)(entry["string_value"]) if entry else default


class _Gpu:
    def __init__(self, device_id, footprint_bytes):
        import torch

        self.torch = torch
        self.device = torch.device(f"cuda:{device_id}")
        torch.cuda.set_device(self.device)
        self.resident = torch.ones(footprint_bytes, dtype=torch.uint8, device=self.device) if footprint_bytes else None
        self.matrix = torch.rand(2048, 2048, device=self.device)
        self.burn(0.0)  # cuBLAS's workspace is allocated now, not during the first request
        torch.cuda.synchronize(self.device)

    def burn(self, seconds):
        started = time.monotonic()
        while True:
            self.matrix = self.matrix @ self.matrix
            self.matrix /= self.matrix.norm()
            self.torch.cuda.synchronize(self.device)
            if time.monotonic() - started >= seconds:
                return

    def respond(self, tensor):
        values = self.torch.from_dlpack(tensor.to_dlpack())  # the request's input, on the host
        return pb_utils.Tensor.from_dlpack("OUTPUT0", self.torch.utils.dlpack.to_dlpack(values * 2))


class _Host:
    def __init__(self, footprint_bytes):
        # Repeating a byte writes every page: the memory is resident, not merely reserved.
        self.resident = bytearray(b"\x01") * footprint_bytes

    def burn(self, seconds):
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            pass

    def respond(self, tensor):
        return pb_utils.Tensor("OUTPUT0", tensor.as_numpy() * 2)  # numpy 1 beside this stub


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        footprint_bytes = _parameter(config, "footprint_bytes", 0)
        self.compute_seconds = _parameter(config, "compute_seconds", 0.0)
        self.device: _Gpu | _Host | None
        if args.get("model_instance_kind") == "GPU":
            self.device = _Gpu(int(args["model_instance_device_id"]), footprint_bytes)
        else:
            self.device = _Host(footprint_bytes)

    def execute(self, requests):
        assert self.device is not None
        self.device.burn(self.compute_seconds)
        return [
            pb_utils.InferenceResponse([self.device.respond(pb_utils.get_input_tensor_by_name(request, "INPUT0"))])
            for request in requests
        ]

    def finalize(self):
        self.device = None
