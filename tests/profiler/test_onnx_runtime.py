"""`gpupack profile` on a model that runs a real runtime (ONNX Runtime), on a fresh server."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from gpupack.domain import Resource
from gpupack.profiles import load_profile
from gpupack.testing import TritonServer
from gpupack.testing.highwater import BackendWatch
from gpupack.testing.onnx_models import OnnxSampleModel, write_onnx_model_repository

from tests.profiler.conftest import gpupack

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.triton
MLP = OnnxSampleModel("mlp", 64 * 2**20)


def test_peak_is_the_runtime_process_high_water_mark_and_grows_with_the_batch(
    start_triton: Callable[..., TritonServer], tmp_path: Path
) -> None:
    server = start_triton(name="onnx-profiled", repository=write_onnx_model_repository(tmp_path / "models", [MLP]))
    out = tmp_path / "profile.yaml"

    with BackendWatch(server.pid) as high_water:
        result = gpupack("profile", "--server", server.http_url, "--backend", "host", "--models", MLP.name,
                         "--batch", f"1,{MLP.max_batch_size}", "--duration", "0.5s", "--warmup", "0.2s",
                         "--out", str(out))

    assert result.returncode == 0, result.stderr
    points = {p.batch_size: p.peak(Resource.GPU_MEMORY) for p in load_profile(out).points[MLP.name]}
    print(f"mlp: peak by batch {', '.join(f'{b}: {v / 2**20:.1f} MiB' for b, v in points.items())}, "
          f"VmHWM {high_water.highest[MLP.name] / 2**20:.1f} MiB")
    assert max(points.values()) == pytest.approx(high_water.highest[MLP.name], rel=0.05)
    # The arena's growth for the larger batch's activations is in that point's peak.
    grown = points[MLP.max_batch_size] - points[1]
    assert grown >= 0.9 * (MLP.max_batch_size - 1) * MLP.activation_bytes_per_item
