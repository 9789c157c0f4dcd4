"""The rebalancer in-process, as the rules engine drives it, and what it publishes afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from gpupack.rules.loader import load_policies
from gpupack.scheduler.rebalance.inputs import ProfileInputs
from gpupack.scheduler.rebalance.metrics import RebalanceState, make_wsgi_app
from gpupack.scheduler.rebalance.rebalancer import Rebalancer
from gpupack.scheduler.rebalance.settings import RebalanceSettings
from gpupack.servers import ServerConfig

from tests.conftest import CROWDING_PROFILE, REBALANCE_AT_80_PERCENT
from gpupack.testing import TritonServer

MIB = 2**20

def get(app: Callable, path: str) -> tuple[str, bytes]:
    status: list[str] = []
    body = b"".join(app({"PATH_INFO": path}, lambda s, headers: status.append(s)))
    return status[0], body


def rebalancer(tmp_path: Path, servers: list[ServerConfig], state: RebalanceState) -> Rebalancer:
    (tmp_path / "profile.yaml").write_text(CROWDING_PROFILE)
    (tmp_path / "policies.yaml").write_text(REBALANCE_AT_80_PERCENT)
    return Rebalancer(
        servers,
        ProfileInputs(str(tmp_path / "profile.yaml"), servers, 448 * MIB),
        load_policies(tmp_path / "policies.yaml"),
        RebalanceSettings(state_dir=tmp_path / "state", drain_seconds=0.2),
        state=state,
    )


class ScrapedAtEveryCount(RebalanceState):
    """Keeps what a scrape would have seen the moment each move is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_when_counted: list[set[tuple[str, str]]] = []

    def count_moves(self, result: str, count: int = 1) -> None:
        self.seen_when_counted.append({(m.server, m.model) for m in self.snapshot().placement})
        super().count_moves(result, count)


def test_no_violations_means_nothing_is_read_or_moved(tmp_path: Path) -> None:
    state = RebalanceState()
    unreachable = [ServerConfig("a", "http://127.0.0.1:1")]
    assert rebalancer(tmp_path, unreachable, state).request([]) is None
    assert not (tmp_path / "state" / "audit.jsonl").exists()


@pytest.mark.triton
def test_a_rebalance_request_moves_the_model_and_publishes_where_it_went(
    start_crowded_fleet: Callable[[str, str], tuple[TritonServer, TritonServer]], tmp_path: Path
) -> None:
    a, b = start_crowded_fleet("a", "b")
    state = ScrapedAtEveryCount()
    servers = [ServerConfig("a", a.http_url), ServerConfig("b", b.http_url)]
    outcome = rebalancer(tmp_path, servers, state).request(["gpu-memory-80 violated on cpu:a"])
    assert outcome is not None and outcome.succeeded
    (moved,) = b.ready_models()
    (seen,) = state.seen_when_counted
    assert ("b", moved) in seen and ("a", moved) not in seen, "a scrape saw the move counted before it was placed"

    app = make_wsgi_app(state)
    status, body = get(app, "/api/v1/placement")
    placement: dict[str, Any] = json.loads(body)
    assert status == "200 OK"
    assert {(m["model"], m["server"], m["device"]) for m in placement["models"]} == {
        (moved, "b", "cpu:b"), (({"large-a", "large-b"} - {moved}).pop(), "a", "cpu:a")
    }
    _, metrics = get(app, "/metrics")
    text = metrics.decode()
    assert f'gpupack_model_placement{{device="cpu:b",model="{moved}",server="b",version="1"}} 1.0' in text
    assert f'model="{moved}",server="a"' not in text
    assert 'gpupack_rebalance_moves_total{result="succeeded"} 1.0' in text
    assert "gpupack_rebalance_last_success_timestamp_seconds " in text
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True)
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
