"""The README's main command, as a user runs it: the whole loop, before and after, nothing left behind;
kept, it says where everything it serves is, and any stop signal ends all of it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from urllib.parse import urlsplit

import psutil
import pytest
import requests
import yaml

from tests.kept_demo import KeptDemo

pytestmark = pytest.mark.triton


def test_demo_finds_the_overfull_device_moves_a_model_and_ends_healthy(triton_installation, tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "gpupack", "demo", "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    before, after = out.split("BEFORE:")[1].split("AFTER:")
    assert re.search(r"cpu:triton-0\s+segmentation_ct_liver, segmentation_mri_brain_tumor\s+\d+\s+\d+\s+\d+%\s+violated",
                     before)
    assert "violated" not in after.split("PLAN:")[0]
    assert re.search(r"moved segmentation_\w+: cpu:triton-0 -> cpu:triton-\d", out)
    assert "fleet healthy" in out
    assert re.search(r"\n  \d devices \(proven optimal", out), "the planner's fewest-devices answer is shown"
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if any(str(workdir) in a for a in p.info["cmdline"] or ())]
    assert leftovers == []


def _netlocs(config: dict) -> set[str]:
    """Every host:port the demo's config file names: servers (HTTP and metrics), exporter, rules engine, router."""
    found = {config["exporter"]["listen"], config["rules"]["listen"], config["router"]["listen"]}
    for section in ("exporter", "rules"):
        for server in config[section]["servers"]:
            found |= {urlsplit(server["url"]).netloc, urlsplit(server["metrics_url"]).netloc}
    return found


def test_a_kept_demo_prints_every_url_it_serves_and_sigterm_stops_all_it_started(triton_installation, tmp_path):
    demo = KeptDemo(tmp_path / "demo")
    try:
        urls = demo.serving().urls()
        children = demo.children()
        assert sorted(urls) == ["exporter", "router", "rules engine", *(f"triton-{i}" for i in range(5))], demo.output
        for name, addresses in urls.items():
            triton_api = name.startswith("triton-") or name == "router"  # the router passes health to any server
            answering = [f"{addresses[0]}/v2/health/ready", *addresses[1:]] if triton_api else addresses
            for url in answering:
                assert requests.get(url, timeout=5).status_code == 200, f"{name}: {url}"
        config = yaml.safe_load((tmp_path / "demo" / "gpupack.yaml").read_text())
        assert {urlsplit(url).netloc for addresses in urls.values() for url in addresses} <= _netlocs(config)
        commands = [" ".join(p.cmdline()) for p in children]
        assert sum(p.name() == "tritonserver" for p in children) == 5, commands
        assert sum(p.name() == "haproxy" for p in children) >= 1, commands
        assert any(c.endswith(" exporter") for c in commands) and any(" rules run" in c for c in commands), commands

        status, still_running = demo.signalled(signal.SIGTERM, within_seconds=10)
        assert still_running == [], "still running 10 s after SIGTERM"
        assert status == 0, demo.output  # --keep: a stop is the expected end, not a failure
    finally:
        demo.stop()


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT])
def test_a_demo_stopped_mid_run_stops_all_it_started(triton_installation, tmp_path, signum):
    demo = KeptDemo(tmp_path / "demo")
    try:
        demo.wait_for("exporter has peaks for all")
        assert any("exporter" in p.cmdline() for p in demo.children())
        status, still_running = demo.signalled(signum, within_seconds=10)
        assert still_running == [], f"still running 10 s after {signum.name}"
        assert status == 128 + signum, demo.output  # as a shell reports a command that a signal ended
        demo.ended()
        assert demo.output.splitlines()[-1] == \
            f"gpupack demo: stopped by {signum.name}; everything it started is stopped"
    finally:
        demo.stop()
