"""The shipped alerting configuration passes the real promtool and amtool, unit tests included,
and the derived files (policy alerts, PrometheusRules) are what deploy/sync.py writes."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"

pytestmark = pytest.mark.prometheus


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian packages prometheus / prometheus-alertmanager)")
    return found


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd)


def gpupack(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = run(sys.executable, "-m", "gpupack", *args, cwd=cwd)
    if result.returncode != 0 and "invalid choice" in result.stderr:
        pytest.skip(f"'gpupack {' '.join(map(str, args[:2]))}' (issue 4) is not built yet")
    return result


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.rules.yaml"))


def test_shipped_alert_rules_pass_promtool_check() -> None:
    assert [p.name for p in rule_files()] == ["gpupack-health.rules.yaml", "gpupack-policies.rules.yaml"]
    result = run(tool("promtool"), "check", "rules", *rule_files())
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_shipped_alert_has_a_passing_promtool_unit_test() -> None:
    test_files = sorted(RULES_DIR.glob("*.rules.test.yaml"))
    result = run(tool("promtool"), "test", "rules", *test_files, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = re.findall(r"^\s*- alert: (\w+)", "".join(p.read_text() for p in rule_files()), re.MULTILINE)
    tested = set(re.findall(r"alertname: (\w+)", "".join(p.read_text() for p in test_files)))
    assert alerts and set(alerts) <= tested


@pytest.mark.parametrize("policies_dir, rules_dir", [(DEPLOY, RULES_DIR), (DEPLOY / "cpu", DEPLOY / "cpu" / "rules")],
                         ids=["deploy", "cpu-stack"])
def test_shipped_policy_alerts_are_what_export_prometheus_writes(tmp_path: Path, policies_dir: Path,
                                                                 rules_dir: Path) -> None:
    exported = tmp_path / "gpupack-policies.rules.yaml"
    result = gpupack("rules", "export-prometheus", f"--policies={policies_dir / 'policies.yaml'}", exported)
    assert result.returncode == 0, result.stderr
    for name in ("gpupack-policies.rules.yaml", "gpupack-policies.rules.test.yaml"):
        assert (tmp_path / name).read_text() == (rules_dir / name).read_text(), f"run 'python deploy/sync.py' ({name})"


def test_shipped_policies_pass_gpupack_rules_check() -> None:
    """The Kubernetes copy is checked equal to this one below."""
    result = gpupack("rules", "check", DEPLOY / "policies.yaml")
    assert result.returncode == 0, result.stderr


def test_kubernetes_copies_are_what_sync_writes() -> None:
    spec = importlib.util.spec_from_file_location("gpupack_deploy_sync", DEPLOY / "sync.py")
    assert spec and spec.loader
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    assert (DEPLOY / "kubernetes" / "policies.yaml").read_text() == (DEPLOY / "policies.yaml").read_text()
    for name in sync.RULE_SETS:
        expected = sync.prometheus_rule(name, (RULES_DIR / f"{name}.rules.yaml").read_text())
        committed = (DEPLOY / "kubernetes" / f"prometheusrule-{name}.yaml").read_text()
        assert committed == expected, "run 'python deploy/sync.py'"


def test_compose_prometheus_config_is_valid_and_loads_every_rule_file() -> None:
    result = run(tool("promtool"), "check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_files())} rule files found" in result.stdout


def test_alertmanager_config_is_valid() -> None:
    result = run(tool("amtool"), "check-config", DEPLOY / "alertmanager" / "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr
