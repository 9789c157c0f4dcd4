"""A Triton Python-backend model that runs real inference with ONNX Runtime.

Copied into a model repository as ``<model>/1/model.py`` beside the ``model.onnx`` that
:mod:`gpupack.testing.onnx_models` builds; it runs in Triton's stub, never imported by gpupack.
Unlike the footprint models, its memory is a real runtime's: the weights ONNX Runtime loads and
the arena it grows for each batch's activations, which nothing here sizes by hand.
"""

from pathlib import Path

import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # one core per instance, as on a shared CPU-only server
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            (output,) = self.session.run(None, {"INPUT0": values})
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", output)]))
        return responses

    def finalize(self):
        self.session = None
