"""The router in the deployments: the Kubernetes overlay (deploy/kubernetes-router) renders and
validates, HAProxy shares the rules engine's pod and admin socket, and every command line and
router section in it and in compose.yaml is one gpupack accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gpupack.app.cli import build_parser
from gpupack.config import load_config_file
from gpupack.router.settings import router_settings

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "kubernetes-router"
COMPOSE = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    kubectl = shutil.which("kubectl") or pytest.skip("kubectl is not installed (it renders the kustomization)")
    result = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in yaml.safe_load_all(result.stdout) if doc}


def _pod(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objects["Deployment/gpupack-rules"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_overlay_with_the_router_validates(objects: dict[str, dict[str, Any]], version: str) -> None:
    for doc in objects.values():
        if doc["kind"] not in ("ServiceMonitor", "PrometheusRule"):  # test_kubernetes checks those against their CRDs
            kubernetes_validate.validate(doc, version, strict=True)
    assert all(doc["metadata"].get("namespace") == "gpupack" for key, doc in objects.items()
               if not key.startswith("Namespace/"))


def test_haproxy_runs_beside_the_rules_engine_which_drives_it_through_their_shared_socket(
        objects: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    pod = _pod(objects)
    containers = {c["name"]: c for c in pod["containers"]}
    (init,) = pod["initContainers"]
    settings_volume = next(v for v in pod["volumes"] if v["name"] == "router-settings")
    settings_map = objects[f"ConfigMap/{settings_volume['configMap']['name']}"]
    (tmp_path / "gpupack.yaml").write_text(settings_map["data"]["gpupack.yaml"])
    settings = router_settings(load_config_file(tmp_path / "gpupack.yaml"))
    socket_dir = str(Path(settings.admin_socket).parent)
    mounted = {name: {m["mountPath"]: m["name"] for m in c["volumeMounts"]} for name, c in containers.items()}
    assert mounted["rules"][socket_dir] == mounted["router"][socket_dir]
    assert f"--router=haproxy:{settings.admin_socket}" in containers["rules"]["args"]
    # HAProxy reads the file the init container wrote, on a volume both mount.
    written = next(a.split("=", 1)[1] for a in init["args"] if a.startswith("--output="))
    assert containers["router"]["command"][-1] == written
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]}[str(Path(written).parent)] == \
        mounted["router"][str(Path(written).parent)]
    assert init["image"] == containers["rules"]["image"]
    assert init["envFrom"] == containers["rules"]["envFrom"]  # the servers it routes are the ones moved on
    port = settings.listen.rsplit(":", 1)[1]
    assert containers["router"]["ports"] == [{"name": "http", "containerPort": int(port)}]
    service = objects["Service/gpupack-router"]["spec"]
    assert service["selector"] == objects["Deployment/gpupack-rules"]["spec"]["selector"]["matchLabels"]
    assert service["ports"][0]["targetPort"] == "http"
    assert objects["Deployment/gpupack-rules"]["spec"]["replicas"] == 1  # the router clients reach is the one driven


def test_the_router_commands_are_ones_gpupack_accepts(objects: dict[str, dict[str, Any]]) -> None:
    (init,) = _pod(objects)["initContainers"]
    lines = {"kubernetes router-config": init["args"], "compose router-config": COMPOSE["services"]["router-config"]["command"],
             "compose rules": COMPOSE["services"]["rules"]["command"]}
    for where, args in lines.items():
        try:
            build_parser().parse_args(args)
        except SystemExit as e:
            pytest.fail(f"{where}: 'gpupack {' '.join(args)}' is rejected (exit {e.code})")


def test_compose_drives_the_router_where_its_configuration_puts_the_runtime_api() -> None:
    settings = router_settings(load_config_file(ROOT / "deploy" / "gpupack.yaml"))
    services = COMPOSE["services"]
    assert f"--router=haproxy:{settings.admin_socket}" in services["rules"]["command"]
    assert settings.admin_socket.startswith("127.0.0.1:") and services["router"]["network_mode"] == "service:rules"
    port = settings.listen.rsplit(":", 1)[1]
    assert f"{port}:{port}" in services["rules"]["ports"]
    written = next(a.split("=", 1)[1] for a in services["router-config"]["command"] if a.startswith("--output="))
    assert services["router"]["command"][-1] == written
