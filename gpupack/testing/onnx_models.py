"""Sample models that run a real runtime: an ONNX MLP, built here with ``onnx``, served by ONNX
Runtime inside Triton's Python backend (:mod:`gpupack.testing.onnx_model`).

The graph is ``INPUT0[N, width] -> MatMul -> Relu -> MatMul -> OUTPUT0[N, width]`` through one
wide hidden layer: its two weight matrices total ``weights_bytes``, and every batch element needs
a hidden activation of ``hidden_width`` floats, so the runtime's arena grows with the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from gpupack.triton.sample_models import write_model_repository

FLOAT_BYTES = 4
OPSET = 17
IR_VERSION = 8  # what ONNX Runtime releases since 1.10 read


@dataclass(frozen=True)
class OnnxSampleModel:
    name: str
    weights_bytes: int
    width: int = 64
    max_batch_size: int = 64
    instance_count: int = 1

    @property
    def hidden_width(self) -> int:
        return max(1, self.weights_bytes // (2 * self.width * FLOAT_BYTES))

    @property
    def activation_bytes_per_item(self) -> int:
        return self.hidden_width * FLOAT_BYTES

    def config_pbtxt(self) -> str:
        return f"""name: "{self.name}"
backend: "python"
max_batch_size: {self.max_batch_size}
input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ {self.width} ] }} ]
output [ {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ {self.width} ] }} ]
instance_group [ {{ kind: KIND_CPU, count: {self.instance_count} }} ]
"""

    def onnx_bytes(self) -> bytes:
        """The serialised graph, weights included (random, scaled so activations stay finite)."""
        import numpy as np  # noqa: PLC0415 - only where models are written
        from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

        rng = np.random.default_rng(0)
        scale = 1.0 / np.sqrt(self.width)
        up = (rng.standard_normal((self.width, self.hidden_width), dtype=np.float32) * scale).astype(np.float32)
        down = (rng.standard_normal((self.hidden_width, self.width), dtype=np.float32) * scale).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["INPUT0", "up"], ["hidden"]),
             helper.make_node("Relu", ["hidden"], ["active"]),
             helper.make_node("MatMul", ["active", "down"], ["OUTPUT0"])],
            self.name,
            [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", self.width])],
            [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", self.width])],
            [numpy_helper.from_array(up, "up"), numpy_helper.from_array(down, "down")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        return model.SerializeToString()


def write_onnx_model_repository(directory: str | Path, models: Iterable[OnnxSampleModel]) -> Path:
    """Lay out ``<dir>/<model>/config.pbtxt``, ``1/model.py`` and ``1/model.onnx`` for each model."""
    models = list(models)
    root = write_model_repository(directory, models, Path(__file__).with_name("onnx_model.py"))
    for model in models:
        (root / model.name / "1" / "model.onnx").write_bytes(model.onnx_bytes())
    return root
