"""The command line as a user meets it: help, version, and one-line errors with exit 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpupack import __version__
from gpupack.app.cli import COMMANDS
from gpupack.triton.launcher import free_port


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
    missing = tmp_path / "from-env.yaml"
    result = gpupack("demo", env={**os.environ, "GPUPACK_CONFIG": str(missing)})
    assert result.returncode == 2
    assert str(missing) in result.stderr


@pytest.mark.parametrize("command", [
    ["plan", "--profile", "examples/seed-profile.yaml", "--device-memory", "16GiB", "--format", "json"],
    ["rules", "check", "rules/examples"],
])
def test_output_into_a_closed_pipe_ends_quietly(command: list[str]) -> None:
    """`gpupack ... | head`: the reader leaves early; no BrokenPipeError traceback follows."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        result = subprocess.run([sys.executable, "-m", "gpupack", *command], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120, cwd=Path(__file__).parents[1])
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr


def test_plan_with_the_demand_prometheus_down_is_exit_3_in_one_line(tmp_path):
    """Not 1 ("infeasible") and not a 300-character urllib3 dump: Prometheus, its URL, the reason."""
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "gpupack", "plan", "--profile", "examples/seed-profile.yaml",
                             "--device-memory", "16GiB", "--demand-from-prometheus", url],
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert result.returncode == 3, result.stderr
    assert result.stderr == f"gpupack plan: error: cannot reach Prometheus at {url}: connection refused\n"


def test_library_log_lines_stay_out_of_a_commands_output(tmp_path):
    """A first plot builds matplotlib's font cache, which it announces in a log line of its own; the
    user asked for a plot and hears where it went, and nothing else."""
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "matplotlib"))
    plot = tmp_path / "plan.png"
    result = subprocess.run([sys.executable, "-m", "gpupack", "plan", "--profile", "examples/seed-profile.yaml",
                             "--device-memory", "16GiB", "--plot", str(plot)],
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"wrote plot to {plot}\n"
    assert plot.stat().st_size > 0 and (tmp_path / "matplotlib").is_dir()
