"""The exporter against a model that runs a real runtime: ONNX Runtime, with its own arena."""

from __future__ import annotations

import numpy as np
import pytest

from gpupack.testing.onnx_models import OnnxSampleModel, write_onnx_model_repository
from gpupack.triton.processes import backend_processes
from tests.exporter.conftest import measured_now, model_entry, peaks, tree_rss_bytes, wait_until

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.triton
MIB = 2**20
MLP = OnnxSampleModel("mlp", 64 * MIB)


@pytest.fixture(scope="module")
def onnx_repository(tmp_path_factory):
    return write_onnx_model_repository(tmp_path_factory.mktemp("onnx-models"), [MLP])


def infer(server, model: OnnxSampleModel, batch_size: int) -> np.ndarray:
    import tritonclient.http as http

    values = np.ones((batch_size, model.width), dtype=np.float32)
    tensor = http.InferInput("INPUT0", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    with http.InferenceServerClient(server.http_address) as client:
        return client.infer(model.name, [tensor]).as_numpy("OUTPUT0")


def test_onnx_runtime_models_arena_growth_is_a_peak_and_its_memory_is_what_unloading_frees(
    start_triton, exporter_factory, onnx_repository
):
    server = start_triton(name="onnx", models=[MLP.name], repository=onnx_repository)
    exporter = exporter_factory([server])
    resident = wait_until(lambda: measured_now(exporter.url, MLP.name))["current"]["gpu_memory"]
    assert resident > MLP.weights_bytes  # the runtime holds the weights

    for _ in range(3):  # 64 hidden activations of 512 KiB: the arena grows by tens of MiB
        output = infer(server, MLP, MLP.max_batch_size)
    assert output.shape == (MLP.max_batch_size, MLP.width) and np.isfinite(output).all()
    grown_bytes = resident + 0.9 * MLP.max_batch_size * MLP.activation_bytes_per_item
    entry = wait_until(lambda: (e := model_entry(peaks(exporter.url), MLP.name))
                       and e["peaks"]["gpu_memory"] >= grown_bytes and e, what="the arena's growth in the model's peak")

    attributed = measured_now(exporter.url, MLP.name)["current"]["gpu_memory"]
    assert entry["source"] == "process"
    stub_pids = {p.pid for p in backend_processes(server.pid) if p.model == MLP.name}
    before = tree_rss_bytes(server.pid)
    server.unload_model(MLP.name)
    wait_until(lambda: not stub_pids & {p.pid for p in backend_processes(server.pid)})
    freed = before - tree_rss_bytes(server.pid)
    print(f"mlp: resident {resident / MIB:.1f} MiB, peak {entry['peaks']['gpu_memory'] / MIB:.1f} MiB, "
          f"attributed {attributed / MIB:.1f} MiB, unloading freed {freed / MIB:.1f} MiB")
    assert abs(attributed - freed) <= 0.05 * freed, f"attributed {attributed / MIB:.1f} MiB, freed {freed / MIB:.1f} MiB"
