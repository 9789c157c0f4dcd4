"""Exported rules and their promtool tests stay a working pair wherever they are written and moved."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gpupack.app.cli import main

from tests.rules.conftest import write_policies

POLICY = "policies:\n  - name: gpu-memory-80\n    resource: gpu_memory\n    max: 80%\n"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")
def test_tests_in_another_folder_name_the_rules_relative_to_themselves_and_survive_a_move(tmp_path: Path) -> None:
    policies = write_policies(tmp_path, POLICY)
    (tmp_path / "repo" / "rules").mkdir(parents=True)
    (tmp_path / "repo" / "tests").mkdir()
    rules = tmp_path / "repo" / "rules" / "gpupack.yaml"
    tests = tmp_path / "repo" / "tests" / "gpupack.test.yaml"
    assert main(["rules", "export-prometheus", str(rules), "--tests", str(tests), "--policies", str(policies)]) == 0
    assert yaml.safe_load(tests.read_text())["rule_files"] == ["../rules/gpupack.yaml"]

    moved = shutil.copytree(tmp_path / "repo", tmp_path / "checkout" / "deploy")
    shutil.rmtree(tmp_path / "repo")
    result = subprocess.run(["promtool", "test", "rules", str(moved / "tests" / "gpupack.test.yaml")],
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr
