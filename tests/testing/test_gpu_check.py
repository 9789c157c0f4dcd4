"""The GPU check's script, run here as `make gpu-check-dry` runs it: the wheel folder is built and
installs as for the GPU machine, and every non-GPU step runs against a real tritonserver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpupack.testing.gpu_truth import hidden_modules_site

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.triton
def test_dry_run_builds_the_wheel_folder_and_passes_every_non_gpu_step(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, WHEELS=str(tmp_path / "whl"), OUT=str(tmp_path))
    bundle = subprocess.run(["sh", "scripts/gpu-bundle.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert bundle.returncode == 0, bundle.stderr
    assert "(limit 60 MiB)" in bundle.stdout
    assert sum(p.stat().st_size for p in (tmp_path / "whl").glob("*.whl")) < 60 * 2**20

    check = subprocess.run(["bash", "scripts/gpu-check.sh", "--dry"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=360)

    assert check.returncode == 0, check.stdout + check.stderr
    assert "dry run: PASSED" in check.stdout
    document = json.loads((tmp_path / "gpu-check.json").read_text())
    status = {c["name"]: c["status"] for c in document["checks"]}
    assert document["mode"] == "dry" and document["passed"]
    assert status["gpu_a memory vs unload delta"] == status["gpu_b memory vs unload delta"] == "pass"
    assert status["profile gpu_a: peak vs highest VmHWM"] == "pass"
    assert status["NVML lists the stubs' PIDs"] == "skip"  # skipped, and says so


def test_without_the_wheel_folder_the_script_says_what_to_run(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, WHEELS=str(tmp_path / "none"))
    check = subprocess.run(["bash", "scripts/gpu-check.sh", "--dry"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 2
    assert "run 'make gpu-bundle' first" in check.stderr


def test_the_dry_runs_commands_cannot_import_what_the_gpu_machine_lacks(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for bundled in ("gpupack", "tritonclient", "rapidjson", "geventhttpclient", "gevent", "greenlet", "zope", "brotli",
                    "pytriton"):
        (site / bundled).mkdir(parents=True)
    hider = hidden_modules_site(tmp_path / "hider", site)
    env = dict(os.environ, PYTHONPATH=str(hider))
    code = ("import gpupack.exporter.cli, gpupack.profiler.cli, gpupack.testing.gpu_check\n"
            "try:\n    import gpupack.scheduler.packing.solver\nexcept ModuleNotFoundError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # The solver needs OR-Tools and HiGHS, neither of which travels: whichever it imports first is refused.
    assert result.stdout.strip() in (f"No module named '{solver_library}' (not on the GPU machine nor in its wheel folder)"
                                     for solver_library in ("ortools", "highspy"))
