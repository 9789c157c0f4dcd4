"""``profile``: a profile file's model peaks stand in for models nothing on the machine measures."""

from __future__ import annotations

import requests

from gpupack.app.cli import main
from gpupack.config import load_config_file
from gpupack.exporter.daemon import Exporter
from gpupack.exporter.settings import load_settings
from gpupack.measurement.nvml import NvmlDoor
from gpupack.triton.launcher import free_port
from tests.exporter.conftest import model_entry, peaks, wait_until
from gpupack.testing.fakes import GIB, FakeGpu, FakeTritonClient, fake_pynvml

_ON_GPU_0 = {"instance_group": [{"kind": "KIND_GPU", "count": 1, "gpus": [0]}]}


def _metrics(url: str) -> dict[str, str]:
    text = requests.get(f"{url}/metrics", timeout=5).text
    return {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in text.splitlines() if not line.startswith("#")}


def test_a_model_nothing_measures_gets_its_profile_peak_and_a_measured_one_keeps_its_source(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("server_baseline:\n  peak_gpu_memory_bytes: 1GiB\nmodels:\n"
                       "  - model: onnx_model\n    peak_gpu_memory_bytes: 3GiB\n"
                       "  - model: reporting\n    peak_gpu_memory_bytes: 5GiB\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"exporter:\n  profile: {profile}\n  backend: nvml\n  listen: 127.0.0.1:{free_port()}\n"
                      f"  state_dir: {tmp_path / 'state'}\n  servers:\n    - name: t\n      url: http://127.0.0.1:1\n")
    settings = load_settings(load_config_file(config), {}, {})
    client = FakeTritonClient({
        "onnx_model": {"config": _ON_GPU_0},  # no process, no memory_usage, loaded before we started
        "reporting": {"config": _ON_GPU_0, "stats": {"memory_usage": [{"type": "GPU", "id": 0, "byte_size": 2 * GIB}]}},
    })
    door = NvmlDoor(fake_pynvml([FakeGpu("GPU-a", used_bytes=10 * GIB)]))
    with Exporter(settings, client_factory=lambda _: client, nvml_door=door) as exporter:
        series = 'gpupack_model_memory_bytes{device="GPU-a",model="onnx_model",server="t",source="profile",version="1"}'
        metrics = wait_until(lambda: (m := _metrics(exporter.url)) and series in m and m)
        document = peaks(exporter.url)
    assert float(metrics[series]) == 3 * GIB
    assert float(metrics['gpupack_model_memory_bytes{device="GPU-a",model="reporting",server="t",source="triton",version="1"}']) == 2 * GIB
    # The profile's share comes out of the server's remainder, so the parts still add up to the device.
    assert float(metrics['gpupack_server_unattributed_memory_bytes{device="GPU-a",server="t"}']) == 5 * GIB
    entry = model_entry(document, "onnx_model")
    assert entry["source"] == "profile" and entry["peaks"]["gpu_memory"] == 3 * GIB


def test_a_bad_profile_file_is_one_line_naming_its_field_and_exit_2(tmp_path, capsys, monkeypatch):
    profile = tmp_path / "profile.yaml"
    profile.write_text("server_baseline:\n  peak_gpu_memory_bytes: 1GiB\nmodels:\n  - model: onnx_model\n    peak_gpu_memory_bytes: lots\n")
    monkeypatch.setenv("GPUPACK_EXPORTER_PROFILE", str(profile))
    status = main(["exporter", "--server", "t=http://127.0.0.1:1", "--state-dir", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert status == 2
    assert "profile.yaml:5: models[0].peak_gpu_memory_bytes: " in err and err.count("\n") == 1
    assert not (tmp_path / "state").exists()  # nothing was started
