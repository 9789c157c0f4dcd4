"""Planning before anything runs: a profile plus a proposed placement, judged like live peaks."""

from __future__ import annotations

import pytest

from gpupack.app.cli import main

PROFILE = """server_baseline: {peak_gpu_memory_bytes: 309MB}
models:
  - {model: segmentation_ct_liver, peak_gpu_memory_bytes: 10742MB, peak_gpu_utilization_ratio: 76%}
  - {model: segmentation_mri_brain_tumor, peak_gpu_memory_bytes: 8270MB, peak_gpu_utilization_ratio: 48%}
"""
PLACEMENT = """devices:
  - {{name: GPU-0, capacity: {{gpu_memory: 16GiB}}}}
  - {{name: GPU-1, capacity: {{gpu_memory: 16GiB}}}}
placement:
  segmentation_ct_liver: [GPU-0]
  segmentation_mri_brain_tumor: [{device}]
"""
POLICY = "policies:\n  - name: gpu-memory-80\n    resource: gpu_memory\n    max: 80%\n"


@pytest.mark.parametrize(("device", "status"), [("GPU-0", 1), ("GPU-1", 0)])
def test_liver_and_brain_tumour_on_one_16gib_gpu_break_80_percent(tmp_path, capsys, device, status):
    for name, text in (("profile.yaml", PROFILE), ("placement.yaml", PLACEMENT.format(device=device)),
                       ("policies.yaml", POLICY)):
        (tmp_path / name).write_text(text)
    result = main(["rules", "evaluate", "--once", "--source", "profile", "--policies", str(tmp_path / "policies.yaml"),
                   "--profile", str(tmp_path / "profile.yaml"), "--placement", str(tmp_path / "placement.yaml")])
    assert result == status
    gpu0 = next(line for line in capsys.readouterr().out.splitlines() if "GPU-0" in line)
    assert gpu0.split()[-1] == ("violated" if status else "ok")


def test_placement_naming_an_unknown_device_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "profile.yaml").write_text(PROFILE)
    (tmp_path / "placement.yaml").write_text(PLACEMENT.format(device="GPU-9"))
    (tmp_path / "policies.yaml").write_text(POLICY)
    result = main(["rules", "evaluate", "--once", "--source", "profile", "--policies", str(tmp_path / "policies.yaml"),
                   "--profile", str(tmp_path / "profile.yaml"), "--placement", str(tmp_path / "placement.yaml")])
    assert result == 2
    assert capsys.readouterr().err == (f"gpupack rules: error: {tmp_path / 'placement.yaml'}:6: "
                                       "placement.segmentation_mri_brain_tumor: unknown device 'GPU-9'\n")
