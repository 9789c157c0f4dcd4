"""The command line as a user meets it: help, version, and one-line errors with exit 2."""

import subprocess
import sys

import pytest

from gpupack import __version__
from gpupack.cli import COMMANDS


def gpupack(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpupack", *args], capture_output=True, text=True, timeout=60, env=env)


def test_help_lists_every_subcommand():
    result = gpupack("--help")
    assert result.returncode == 0
    for command in ("exporter", "rules", "plan", "rebalance", "profile", "demo"):
        assert command in COMMANDS
        assert f"    {command}" in result.stdout


def test_version():
    result = gpupack("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gpupack {__version__}"


@pytest.mark.parametrize("args", [["--no-such-flag"], ["demo", "--no-such-flag"], ["no-such-command"]])
def test_usage_errors_are_one_line_and_exit_2(args):
    result = gpupack(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_one_line_exit_2(tmp_path):
    missing = tmp_path / "nope.yaml"
    result = gpupack("--config", str(missing), "demo")
    assert result.returncode == 2
    assert result.stderr.strip() == f"gpupack demo: error: {missing}: file not found"


def test_config_file_can_come_from_the_environment(tmp_path):
    import os

    missing = tmp_path / "from-env.yaml"
    result = gpupack("demo", env={**os.environ, "GPUPACK_CONFIG": str(missing)})
    assert result.returncode == 2
    assert str(missing) in result.stderr
