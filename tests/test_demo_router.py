"""The kept demo as its clients see it: they call its router, its rules engine moves a model after a
policy edit (a pin added to the policies file), and not one request fails; the router hands them
from the old server to the new one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.live_moves import Clients
from gpupack.servers import ServerConfig
from gpupack.testing import TritonInstallation, seed_models
from gpupack.timing import wait_until
from gpupack.triton.control import TritonControl
from tests.kept_demo import KeptDemo

pytestmark = pytest.mark.triton


def test_clients_of_the_kept_demos_router_lose_no_request_while_a_pin_moves_their_model(
        triton_installation: TritonInstallation, tmp_path: Path) -> None:
    demo = KeptDemo(tmp_path / "demo")
    try:
        config = demo.serving().config()
        assert f"router        http://{config['router']['listen']}" in demo.output
        servers = {s["name"]: TritonControl(ServerConfig(s["name"], s["url"]), 30.0) for s in config["rules"]["servers"]}

        def placement() -> dict[str, set[str]]:
            return {name: set(control.ready_models()) for name, control in servers.items()}

        # The smallest model, to the server holding least: the pin fits there under the 80% policy.
        footprint = {m.name: m.footprint_bytes for m in seed_models()}
        before = placement()
        model = min(footprint, key=footprint.__getitem__)
        source = next(name for name, models in before.items() if model in models)
        target = min((name for name in before if name != source),
                     key=lambda name: sum(footprint[m] for m in before[name]))

        with Clients(f"http://{config['router']['listen']}", model, threads=4) as clients:
            wait_until(lambda: len(clients.answers()) >= 20, 30, "clients answered through the router")
            policies_path = Path(config["rules"]["policies"])
            policies = yaml.safe_load(policies_path.read_text())
            policies["policies"].append({"name": f"{model}-pinned", "selector": {"models": [model]},
                                         "pin": {"servers": [target]}, "action": "rebalance"})
            policies_path.write_text(yaml.safe_dump(policies, sort_keys=False))
            wait_until(lambda: (p := placement())[target] >= {model} and model not in p[source], 180,
                       f"{model} moved from {source} to {target}", interval_seconds=0.5)
            served = len(clients.answers())
            wait_until(lambda: len(clients.answers()) >= served + 20, 30, "clients answered after the move")
        answers = clients.answers()

        assert [a for a in answers if a.failed] == []
        assert [a.server for a in answers[:5]] == [source] * 5 and [a.server for a in answers[-5:]] == [target] * 5
    finally:
        demo.stop()


def test_without_haproxy_the_demo_still_runs_and_says_why_no_router_is_in_front(
        triton_installation: TritonInstallation, tmp_path: Path) -> None:
    missing = tmp_path / "no-haproxy-here"
    result = subprocess.run([sys.executable, "-m", "gpupack", "demo", "--workdir", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "HAPROXY": str(missing)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"router off: no haproxy at {missing}" in result.stdout
    assert "fleet healthy" in result.stdout
    assert "router" not in yaml.safe_load((tmp_path / "demo" / "gpupack.yaml").read_text())
