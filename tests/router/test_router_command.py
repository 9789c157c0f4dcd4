"""`gpupack router config` as a user meets it: the configuration HAProxy runs, from the servers of
the config file and what is ready on them now; exit 2 for bad input, 3 for a server that is down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from gpupack.app.cli import main
from gpupack.router.launcher import find_haproxy
from gpupack.testing import TritonServer
from gpupack.triton.launcher import free_port


def write_config(tmp_path: Path, servers: dict[str, str], router: str = "") -> Path:
    lines = ["rules:", "  servers:"] + [f"    - {{name: {name}, url: '{url}'}}" for name, url in servers.items()]
    path = tmp_path / "gpupack.yaml"
    path.write_text("\n".join(lines) + "\n" + router)
    return path


def entries(text: str, backend: str) -> dict[str, bool]:
    """Server name -> serving, in one backend of a configuration."""
    section = text.split(f"\nbackend {backend}\n", 1)[1].split("\n\n", 1)[0]
    return {line.split()[1]: "disabled" not in line.split() for line in section.splitlines()
            if line.strip().startswith("server ")}


def test_the_configuration_routes_each_model_to_where_it_is_ready_now(
        start_triton: Callable[..., TritonServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = start_triton(name="a", models=["small", "empty"]), start_triton(name="b", models=["empty"])
    router = "router: {kind: haproxy, listen: '127.0.0.1:18080', admin_socket: /tmp/gpupack-admin.sock}\n"
    config = write_config(tmp_path, {"a": a.http_url, "b": b.http_url}, router)
    output = tmp_path / "haproxy.cfg"
    assert main(["--config", str(config), "router", "config", "--output", str(output)]) == 0
    text = output.read_text()
    assert entries(text, "model_small") == {"a": True, "b": False}
    assert entries(text, "model_empty") == {"a": True, "b": True}
    assert entries(text, "model_broken") == {"a": False, "b": False}  # in the repository, loaded nowhere
    assert "    bind 127.0.0.1:18080" in text and "stats socket /tmp/gpupack-admin.sock mode 600 level admin" in text
    checked = subprocess.run([find_haproxy(), "-c", "-f", str(output)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    stderr = capsys.readouterr().err
    assert "router config: 7 models on 2 servers, 3 copies serving; clients connect at 127.0.0.1:18080" in stderr

    assert main(["--config", str(config), "router", "config", "--models", "small"]) == 0
    printed = capsys.readouterr().out
    assert entries(printed, "model_small") == {"a": True, "b": False} and "backend model_empty" not in printed


def test_a_server_that_does_not_answer_is_exit_3_in_one_line(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, {"down": url})
    output = tmp_path / "haproxy.cfg"
    assert main(["--config", str(config), "router", "config", "--output", str(output)]) == 3
    assert capsys.readouterr().err == \
        f"gpupack router: error: cannot reach Triton server down at {url}: connection refused\n"
    assert not output.exists()


@pytest.mark.parametrize(("config_text", "args", "message"), [
    ("rules: {}\n", [], "no servers to route"),
    ("rules:\n  servers: [{name: a, url: 'http://127.0.0.1:1'}]\nrouter:\n  listen: nowhere\n", [],
     ":4: router.listen: 'nowhere' is not HOST:PORT"),
    ("rules:\n  servers: [{name: a, url: 'http://127.0.0.1:1'}]\n", ["--models", " , "], "--models: give at least one"),
])
def test_bad_input_is_exit_2_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], config_text: str,
                                         args: list[str], message: str) -> None:
    config = tmp_path / "gpupack.yaml"
    config.write_text(config_text)
    assert main(["--config", str(config), "router", "config", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_help_describes_the_action_and_ends_with_the_exit_status_contract() -> None:
    result = subprocess.run([sys.executable, "-m", "gpupack", "router", "config", "--help"], capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0
    assert "--models A,B" in result.stdout and "--output PATH" in result.stdout
    assert "exit status: 0 ok" in result.stdout
