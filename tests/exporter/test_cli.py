"""`gpupack exporter` as a user runs it: bad config, clean stop, peaks surviving kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from gpupack.app.cli import main
from gpupack.triton.launcher import free_port
from tests.exporter.conftest import model_entry, peaks, wait_until

GPUPACK = [sys.executable, "-m", "gpupack"]


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("exporter:\n  sample_hz: 0\n", "config.yaml:2: exporter.sample_hz: "),
        ("exporter:\n  servers:\n    - name: a\n      url: http://127.0.0.1:1\n      memory_budget: lots\n",
         "config.yaml:5: exporter.servers[0].memory_budget: "),
        ("exporter:\n  servers:\n    - name: a\n      url: 127.0.0.1:8000\n", "config.yaml:4: exporter.servers[0].url: "),
        ("exporter:\n  listen: nowhere\n", "config.yaml:2: exporter.listen: "),
        ("exporter:\n  backend: [cuda]\n", "config.yaml:2: exporter.backend: unknown backend 'cuda'"),
        ("exporter:\n  colour: blue\n", "config.yaml:2: exporter.colour: unknown setting"),
        ("exporter:\n  metrics: [gpupack_model_memory_bytes, gpupack_nope]\n",
         "config.yaml:2: exporter.metrics: 'gpupack_nope' matches no series family"),
        ("exporter:\n  servers:\n    - name: a\n      url: http://127.0.0.1:1\n      models: {only: [bert]}\n",
         "config.yaml:5: exporter.servers[0].models: unknown key 'only'"),
    ],
)
def test_bad_config_is_one_line_naming_the_field_and_exit_2(tmp_path, capsys, config_text, message):
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    status = main(["--config", str(config), "exporter", "--state-dir", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "state").exists()  # nothing was started


def test_a_metrics_flag_naming_no_family_is_one_line_and_exit_2(tmp_path, capsys):
    status = main(["exporter", "--server", "a=http://127.0.0.1:1", "--metrics", "gpupack_gpu_*",
                   "--state-dir", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert status == 2 and "--metrics: 'gpupack_gpu_*' matches no series family" in err and err.count("\n") == 1
    assert not (tmp_path / "state").exists()


def test_a_servers_model_lists_in_the_config_are_read_once_into_its_filter(tmp_path):
    from gpupack.config import load_config_file
    from gpupack.exporter.settings import load_settings
    from gpupack.servers import ModelFilter

    config = tmp_path / "config.yaml"
    config.write_text("exporter:\n  metrics: gpupack_model_*\n  servers:\n    - name: a\n      url: http://127.0.0.1:1\n"
                      "      models:\n        allow: [resnet*, bert]\n        deny: ['*_canary']\n")
    settings = load_settings(load_config_file(config), {}, {})
    assert settings.servers[0].models == ModelFilter(("resnet*", "bert"), ("*_canary",))
    assert "gpupack_model_memory_bytes" in settings.families and "gpupack_server_up" not in settings.families


def test_a_taken_port_is_an_input_error_and_nothing_starts(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["exporter", "--server", "a=http://127.0.0.1:1", "--listen", f"127.0.0.1:{port}",
                       "--state-dir", str(tmp_path / "state")])
    assert status == 2
    assert capsys.readouterr().err == (f"gpupack exporter: error: cannot listen on 127.0.0.1:{port}: "
                                       "address already in use\n")
    assert not (tmp_path / "state").exists()


def _start_exporter(server, state_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [*GPUPACK, "exporter", "--server", f"{server.name}={server.http_url}", "--backend", "host",
         "--listen", f"127.0.0.1:{port}", "--state-dir", str(state_dir), "--sample-hz", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.triton
def test_peaks_survive_kill_9_of_the_exporter(start_triton, tmp_path):
    server = start_triton(name="a", models=["medium"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exporter = _start_exporter(server, tmp_path / "state", port)
    try:
        def medium_peak() -> float | None:
            try:
                entry = model_entry(peaks(url), "medium")
            except requests.RequestException:
                return None
            return entry and entry["peaks"].get("gpu_memory")

        recorded = wait_until(medium_peak)
        os.kill(exporter.pid, signal.SIGKILL)
        exporter.wait(timeout=10)
        server.unload_model("medium")  # what the restarted exporter shows can only come from disk
        exporter = _start_exporter(server, tmp_path / "state", port)
        entry = wait_until(lambda: medium_peak() and model_entry(peaks(url), "medium"))
        assert entry["loaded"] is False
        assert entry["peaks"]["gpu_memory"] >= recorded
        assert entry["source"] == "process"
    finally:
        exporter.kill()
        exporter.wait(timeout=10)


@pytest.mark.triton
def test_sigterm_stops_the_exporter_cleanly(start_triton, tmp_path):
    server = start_triton(name="a")
    port = free_port()
    exporter = _start_exporter(server, tmp_path / "state", port)
    try:
        wait_until(lambda: _healthy(port))
        exporter.send_signal(signal.SIGTERM)
        assert exporter.wait(timeout=15) == 0
    finally:
        exporter.kill()
    assert "stopped" in exporter.stderr.read()


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
