"""A real HAProxy in front of two real Triton servers: requests reach the copy the router was told
about, and each change of the runtime API moves them at once."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import requests

from gpupack.router import DRAINING, MAX_WEIGHT, OFF, SERVING
from gpupack.router.haproxy import HaproxyRouter
from gpupack.servers import ServerConfig
from gpupack.testing import SampleModel, TritonInstallation, TritonServer, haproxy_in_front, triton_fleet
from gpupack.testing.haproxy import HaproxyProcess
from gpupack.timing import wait_until
from gpupack.triton.sample_models import write_model_repository

SLOW_SECONDS = 1.5
MODELS = [SampleModel("small", 0), SampleModel("slow", 0, compute_seconds=SLOW_SECONDS)]
WAIT_SECONDS = 30  # generous: other engineers' Triton suites share the cores


@pytest.fixture(scope="module")
def fleet(triton_installation: TritonInstallation,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TritonServer]]:
    """Servers a and b, both holding both models: the router alone decides which one answers."""
    repository = write_model_repository(tmp_path_factory.mktemp("router-models"), MODELS)
    with triton_fleet(repository, ["a", "b"], installation=triton_installation) as servers:
        for server in servers:
            for model in MODELS:
                server.load_model(model.name)
        yield servers


@pytest.fixture
def proxy(fleet: list[TritonServer], tmp_path: Path) -> Iterator[HaproxyProcess]:
    """Both models placed on a only."""
    servers = [ServerConfig(server.name, server.http_url) for server in fleet]
    placed = {(model.name, "a") for model in MODELS}
    with haproxy_in_front(servers, [model.name for model in MODELS], placed, tmp_path) as started:
        router = started.router()
        wait_until(lambda: all(router.status(model.name, "a").up for model in MODELS), WAIT_SECONDS, "models up on a")
        yield started


BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}]}


def infer(proxy: HaproxyProcess, model: str = "small") -> requests.Response:
    return requests.post(f"{proxy.url}/v2/models/{model}/infer", json=BODY, timeout=WAIT_SECONDS)


def answered_by(proxy: HaproxyProcess, requests_sent: int) -> Counter[str]:
    answers = [infer(proxy) for _ in range(requests_sent)]
    assert [answer.status_code for answer in answers] == [200] * requests_sent
    return Counter(answer.headers["X-Gpupack-Server"] for answer in answers)


def enable_and_wait_up(router: HaproxyRouter, model: str, server: str, weight: int = MAX_WEIGHT) -> None:
    """A placed copy starts at MAX_WEIGHT (the configuration gives every copy it): the same here, an even split."""
    router.enable(model, server, weight)
    wait_until(lambda: router.status(model, server).up, WAIT_SECONDS, f"{model} up on {server}", interval_seconds=0.02)


def test_an_infer_reaches_the_server_its_model_is_placed_on(proxy: HaproxyProcess) -> None:
    assert answered_by(proxy, 4) == {"a": 4}
    health = requests.get(f"{proxy.url}/v2/health/ready", timeout=WAIT_SECONDS)
    assert health.status_code == 200 and health.headers["X-Gpupack-Server"] in ("a", "b")


def test_enabling_b_then_disabling_a_moves_the_traffic_without_retries(proxy: HaproxyProcess) -> None:
    router = proxy.router()
    enable_and_wait_up(router, "small", "b")
    assert answered_by(proxy, 4) == {"a": 2, "b": 2}
    router.drain("small", "a")
    assert router.status("small", "a").state == DRAINING
    assert answered_by(proxy, 4) == {"b": 4}
    router.disable("small", "a")
    assert (router.status("small", "a").state, router.status("small", "a").up) == (OFF, False)
    assert answered_by(proxy, 4) == {"b": 4}
    assert [count for count in router.retry_counts() if count.retries or count.redispatches] == []


def test_an_entry_is_up_only_once_a_check_sees_its_model_ready(proxy: HaproxyProcess,
                                                               fleet: list[TritonServer]) -> None:
    router = proxy.router()
    b = fleet[1]
    b.unload_model("small")
    try:
        router.enable("small", "b", MAX_WEIGHT)
        status = router.status("small", "b")
        assert (status.state, status.up) == (SERVING, False)
        assert answered_by(proxy, 4) == {"a": 4}
        b.load_model("small")
        wait_until(lambda: router.status("small", "b").up, WAIT_SECONDS, "small up on b", interval_seconds=0.02)
        assert answered_by(proxy, 4) == {"a": 2, "b": 2}
    finally:
        if "small" not in b.ready_models():
            b.load_model("small")


def test_the_whole_router_read_at_once_says_what_each_entry_says(proxy: HaproxyProcess) -> None:
    router = proxy.router()
    router.drain("small", "a")
    router.set_weight(MODELS[1].name, "a", 7)
    read = router.statuses([model.name for model in MODELS] + ["not-routed"])
    assert sorted(read) == sorted((model.name, server) for model in MODELS for server in ("a", "b"))
    assert read == {(model, server): router.status(model, server) for model, server in read}
    assert read["small", "a"].state == DRAINING and read[MODELS[1].name, "a"].weight == 7
    assert read["small", "b"].state == OFF


def test_weights_split_requests_in_their_ratio(proxy: HaproxyProcess) -> None:
    router = proxy.router()
    router.set_weight("small", "a", 3)
    enable_and_wait_up(router, "small", "b", 1)
    assert router.status("small", "a").weight == 3
    answered = answered_by(proxy, 40)
    assert abs(answered["a"] - 30) <= 1 and answered["a"] + answered["b"] == 40  # HAProxy's round starts anywhere


def test_a_draining_entry_keeps_its_request_in_flight_and_takes_no_new_one(proxy: HaproxyProcess) -> None:
    router = proxy.router()
    enable_and_wait_up(router, "slow", "b")
    router.disable("slow", "b")  # so the first slow request surely goes to a
    answers: list[requests.Response] = []
    in_flight = threading.Thread(target=lambda: answers.append(infer(proxy, "slow")))
    in_flight.start()
    wait_until(lambda: router.status("slow", "a").sessions == 1, WAIT_SECONDS, "slow in flight on a",
               interval_seconds=0.02)
    enable_and_wait_up(router, "slow", "b")
    router.drain("slow", "a")
    status = router.status("slow", "a")
    assert (status.state, status.up, status.sessions, status.queued) == (DRAINING, True, 1, 0)
    assert infer(proxy, "slow").headers["X-Gpupack-Server"] == "b"
    in_flight.join(WAIT_SECONDS)
    assert answers[0].status_code == 200 and answers[0].headers["X-Gpupack-Server"] == "a"
    assert router.status("slow", "a").sessions == 0


def test_a_model_just_unloaded_answers_404_and_the_router_503_once_its_check_sees_it(
        proxy: HaproxyProcess, fleet: list[TritonServer]) -> None:
    """What clients see when a copy is unloaded while still in rotation: the order of a move
    exists to prevent exactly this. The README quotes both codes."""
    router = proxy.router()
    a = fleet[0]
    a.unload_model("small")
    try:
        gone = requests.post(f"{a.http_url}/v2/models/small/infer", json=BODY, timeout=WAIT_SECONDS)
        assert gone.status_code == 404
        assert gone.json() == {"error": "Request for unknown model: 'small' has no available versions"}
        wait_until(lambda: not router.status("small", "a").up, WAIT_SECONDS, "small down on a", interval_seconds=0.02)
        none_up = infer(proxy)
        assert none_up.status_code == 503 and "X-Gpupack-Server" not in none_up.headers
    finally:
        a.load_model("small")
