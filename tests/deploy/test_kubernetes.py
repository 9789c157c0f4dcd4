"""The Kubernetes manifests render with kustomize and every object is valid for the API server.

Rendering uses the real ``kubectl kustomize`` (offline); core objects are validated against the
Kubernetes OpenAPI schemas shipped by ``kubernetes-validate`` in strict mode (unknown fields are
errors), the Prometheus Operator's objects against the CRD schemas vendored in ``schemas/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gpupack.config import resolve_settings
from gpupack.servers import load_servers
from gpupack.rules.cli import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZATION = ROOT / "deploy" / "kubernetes"
CRD_SCHEMAS = {
    "ServiceMonitor": Path(__file__).with_name("schemas") / "servicemonitor.json",
    "PrometheusRule": Path(__file__).with_name("schemas") / "prometheusrule.json",
}
# The oldest Kubernetes the README promises, and the newest the schemas know.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def render() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders the kustomization)")
    result = subprocess.run([kubectl, "kustomize", str(KUSTOMIZATION)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in render()}


def test_kustomization_renders_every_component(objects: dict[str, dict[str, Any]]) -> None:
    kinds = sorted({key.split("/")[0] for key in objects})
    assert kinds == ["ConfigMap", "DaemonSet", "Deployment", "Namespace", "PersistentVolumeClaim", "PrometheusRule",
                     "Role", "RoleBinding", "Service", "ServiceAccount", "ServiceMonitor"]
    assert all(doc["metadata"].get("namespace") == "gpupack" for key, doc in objects.items()
               if not key.startswith("Namespace/"))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_its_schema(objects: dict[str, dict[str, Any]], version: str) -> None:
    for key, doc in objects.items():
        if doc["kind"] in CRD_SCHEMAS:
            jsonschema.validate(doc, json.loads(CRD_SCHEMAS[doc["kind"]].read_text()))
        else:
            kubernetes_validate.validate(doc, version, strict=True)


def test_a_misspelt_field_is_rejected(objects: dict[str, dict[str, Any]]) -> None:
    """The schemas must be strict, or the test above proves nothing."""
    daemonset = json.loads(json.dumps(objects["DaemonSet/gpupack-exporter"]))
    daemonset["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[0], strict=True)
    monitor = json.loads(json.dumps(objects["ServiceMonitor/gpupack"]))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, json.loads(CRD_SCHEMAS["ServiceMonitor"].read_text()))


def test_exporter_runs_on_every_gpu_node_and_sees_host_processes(objects: dict[str, dict[str, Any]]) -> None:
    pod = objects["DaemonSet/gpupack-exporter"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "--listen=0.0.0.0:9478" in pod["containers"][0]["args"]


def test_rules_engine_may_hold_its_lease_and_nothing_else(objects: dict[str, dict[str, Any]]) -> None:
    deployment = objects["Deployment/gpupack-rules"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "gpupack-rules"
    binding = objects["RoleBinding/gpupack-leader-election"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gpupack-rules", "namespace": "gpupack"}]
    rules = objects["Role/gpupack-leader-election"]["rules"]
    assert {(group, resource) for rule in rules for group in rule["apiGroups"] for resource in rule["resources"]} \
        == {("coordination.k8s.io", "leases")}
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    lease = next(r["resourceNames"][0] for r in rules if "resourceNames" in r)
    assert env["GPUPACK_REBALANCE_LOCK"] == f"lease:{lease}"


def test_policies_configmap_is_mounted_by_its_generated_name(objects: dict[str, dict[str, Any]]) -> None:
    configmap = next(doc for key, doc in objects.items() if key.startswith("ConfigMap/gpupack-policies-"))
    assert yaml.safe_load(configmap["data"]["policies.yaml"])["policies"][0]["max"] == "80%"
    volumes = objects["Deployment/gpupack-rules"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "policies", "configMap": {"name": configmap["metadata"]["name"]}} in volumes


def test_service_monitor_scrapes_both_services_by_their_metrics_port(objects: dict[str, dict[str, Any]]) -> None:
    monitor = objects["ServiceMonitor/gpupack"]["spec"]
    services = [doc for key, doc in objects.items() if key.startswith("Service/")]
    selected = [s["metadata"]["name"] for s in services
                if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert sorted(selected) == ["gpupack-exporter", "gpupack-rules"]
    for service in services:
        assert [p["name"] for p in service["spec"]["ports"]] == [monitor["endpoints"][0]["port"]]


def test_prometheus_rules_carry_every_shipped_alert(objects: dict[str, dict[str, Any]]) -> None:
    alerts = {rule["alert"] for key, doc in objects.items() if key.startswith("PrometheusRule/")
              for group in doc["spec"]["groups"] for rule in group["rules"]}
    plain = {rule["alert"] for path in (ROOT / "deploy" / "prometheus" / "rules").glob("*.rules.yaml")
             for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]}
    assert alerts == plain and "GpupackExporterDown" in alerts


def _rules_container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objects["Deployment/gpupack-rules"]["spec"]["template"]["spec"]["containers"][0]


def test_scheduler_state_is_on_a_claim_every_replica_shares_under_a_read_only_root(objects: dict[str, dict[str, Any]]) -> None:
    pod = objects["Deployment/gpupack-rules"]["spec"]["template"]["spec"]
    container = _rules_container(objects)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[env["GPUPACK_REBALANCE_STATE_DIR"]])
    claim = objects[f"PersistentVolumeClaim/{volume['persistentVolumeClaim']['claimName']}"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # the next Lease holder reads the desired state
    assert not any(m.get("readOnly") for m in container["volumeMounts"] if m["name"] == volume["name"])


def test_scheduler_servers_and_apply_come_from_a_generated_configmap_the_cli_accepts(
    objects: dict[str, dict[str, Any]]
) -> None:
    (name,) = [ref["configMapRef"]["name"] for ref in _rules_container(objects)["envFrom"]]
    assert name.startswith("gpupack-rebalance-")
    data = objects[f"ConfigMap/{name}"]["data"]
    assert set(data) == {"GPUPACK_RULES_SERVERS", "GPUPACK_RULES_APPLY"}
    settings = resolve_settings("rules", SETTINGS, None, {**data, "GPUPACK_RULES_POLICIES": "p.yaml"}, {})
    assert settings["apply"] is True
    assert load_servers(None, data, {}, section="rules") == ()  # until servers are listed: plans are logged
    # The example in the file's comments, as a user would uncomment it.
    (example,) = [line.lstrip("# ") for line in (KUSTOMIZATION / "scheduler.env").read_text().splitlines()
                  if line.startswith("#") and "GPUPACK_RULES_SERVERS=" in line]
    key, _, value = example.partition("=")
    assert [s.name for s in load_servers(None, {key: value}, {}, section="rules")] == ["gpu-node-1", "gpu-node-2"]


def test_each_exporter_names_its_triton_after_its_node(objects: dict[str, dict[str, Any]]) -> None:
    """The scheduler tells servers apart by the exporter's names for them: one name per node."""
    container = objects["DaemonSet/gpupack-exporter"]["spec"]["template"]["spec"]["containers"][0]
    assert "--server=$(NODE_NAME)=http://$(NODE_IP):8000" in container["args"]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["NODE_NAME"] == "spec.nodeName"
