"""The README's main command, as a user runs it: the whole loop, before and after, nothing left behind."""

from __future__ import annotations

import re
import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.triton


def test_demo_finds_the_overfull_device_moves_a_model_and_ends_healthy(triton_installation, tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "gpupack", "demo", "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    before, after = out.split("BEFORE:")[1].split("AFTER:")
    assert re.search(r"cpu:triton-0\s+segmentation_ct_liver, segmentation_mri_brain_tumor\s+\d+\s+\d+\s+\d+%\s+violated",
                     before)
    assert "violated" not in after.split("PLAN:")[0]
    assert re.search(r"moved segmentation_\w+: cpu:triton-0 -> cpu:triton-\d", out)
    assert "fleet healthy" in out
    assert re.search(r"\n  \d devices \(proven optimal", out), "the planner's fewest-devices answer is shown"
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if any(str(workdir) in a for a in p.info["cmdline"] or ())]
    assert leftovers == []
