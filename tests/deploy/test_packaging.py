"""The image, compose file and systemd units agree with the code they run.

Every gpupack command line in deploy/ must be accepted by the real CLI parser, so a renamed flag
breaks a test here rather than a deployment.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from gpupack.app.cli import build_parser
from gpupack.config import load_config_file
from gpupack.exporter.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
CPU_COMPOSE = yaml.safe_load((DEPLOY / "cpu" / "compose.yaml").read_text())
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def exec_start(unit: Path) -> list[str]:
    line = next(l for l in unit.read_text().splitlines() if l.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def gpupack_command_lines() -> dict[str, list[str]]:
    lines = {f"compose {name}": service["command"] for name, service in COMPOSE["services"].items()
             if service.get("image", "").startswith("gpupack")}
    lines.update({f"cpu compose {name}": service["command"] for name, service in CPU_COMPOSE["services"].items()
                  if service["image"] == "localhost/gpupack:latest"})
    for manifest in ("exporter-daemonset.yaml", "rules-deployment.yaml"):
        pod = yaml.safe_load((DEPLOY / "kubernetes" / manifest).read_text())["spec"]["template"]["spec"]
        lines[f"kubernetes {manifest}"] = pod["containers"][0]["args"]
    lines.update({f"systemd {unit.name}": exec_start(unit)[1:] for unit in UNITS})
    return lines


@pytest.mark.parametrize("where", sorted(gpupack_command_lines()))
def test_every_deployed_command_line_is_accepted_by_the_cli(where: str) -> None:
    args = gpupack_command_lines()[where]
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as e:
        pytest.fail(f"{where}: 'gpupack {' '.join(args)}' is rejected (exit {e.code})")
    assert parsed.command in ("exporter", "rules", "router")


def test_compose_runs_every_component_with_existing_files() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"triton", "exporter", "rules", "router-config", "router", "prometheus", "alertmanager", "grafana"}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    assert services["exporter"]["pid"] == "host"


def test_compose_prometheus_scrapes_each_service_where_it_listens() -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in prometheus["scrape_configs"]}
    for job, service in (("gpupack-exporter", "exporter"), ("gpupack-rules", "rules")):
        port = targets[job].split(":")[1]
        assert f"--listen=0.0.0.0:{port}" in COMPOSE["services"][service]["command"]
        assert targets[job].startswith(f"{service}:")


def test_image_contains_every_package_folder() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dirs = set(setuptools["package-dir"].values())
    containerfile = (DEPLOY / "Containerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \1$", containerfile, re.MULTILINE))
    assert package_dirs <= copied, f"missing from the image: {sorted(package_dirs - copied)}"
    assert 'ENTRYPOINT ["gpupack"]' in containerfile


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_verifies(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze") or pytest.skip("systemd-analyze is not installed")
    # The console script installed beside this interpreter (a virtual environment's bin/).
    gpupack = shutil.which("gpupack", path=str(Path(sys.executable).parent)) or pytest.skip("gpupack is not installed")
    local = tmp_path / unit.name  # verify checks the binary exists: point it at this one
    local.write_text(unit.read_text().replace("/usr/local/bin/gpupack", gpupack))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_example_host_configuration_is_accepted_by_the_exporter() -> None:
    settings = load_settings(load_config_file(DEPLOY / "systemd" / "gpupack.yaml"), {}, {})
    assert [(s.name, s.url) for s in settings.servers] == [("triton-0", "http://127.0.0.1:8000")]
    assert settings.peak_window_seconds == 7 * 86400


def test_cpu_stack_configuration_is_accepted_and_agrees_with_its_prometheus() -> None:
    settings = load_settings(load_config_file(DEPLOY / "cpu" / "gpupack.yaml"), {}, {})
    prometheus = yaml.safe_load((DEPLOY / "cpu" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in prometheus["scrape_configs"]}
    assert targets["gpupack-exporter"] == f"{settings.listen_host}:{settings.listen_port}"
    assert [s.name for s in settings.servers] == ["triton-0", "triton-1"]
    assert CPU_COMPOSE["services"]["exporter"]["pid"] == "host"
