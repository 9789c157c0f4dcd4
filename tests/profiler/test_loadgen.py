"""The built-in load generator: inputs shaped from the model's config, counts Triton agrees with."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import requests

from gpupack.profiler.control import ServerControl
from gpupack.profiler.loadgen import (InputSpec, LoadGenerator, ModelSignature, UnsupportedModelError, random_inputs,
                                      signature_from_config)
from gpupack.testing import TritonServer
from gpupack.triton.launcher import free_port

CONFIG = {
    "name": "m",
    "max_batch_size": 8,
    "input": [
        {"name": "IMAGE", "data_type": "TYPE_FP16", "dims": [3, -1]},
        {"name": "IDS", "data_type": "TYPE_INT64", "dims": [4]},
    ],
}


def test_inputs_take_the_batch_dimension_and_types_from_the_config() -> None:
    arrays = random_inputs(signature_from_config(CONFIG), 4, np.random.default_rng(0))

    assert arrays["IMAGE"].shape == (4, 3, 1) and arrays["IMAGE"].dtype == np.float16
    assert arrays["IDS"].shape == (4, 4) and arrays["IDS"].dtype == np.int64


def test_a_model_that_does_not_batch_gets_no_batch_dimension_and_only_batch_one() -> None:
    signature = signature_from_config(dict(CONFIG, max_batch_size=0))

    assert random_inputs(signature, 1, np.random.default_rng(0))["IDS"].shape == (4,)
    assert signature.supports_batch(1) and not signature.supports_batch(2)


def test_string_inputs_are_refused_with_the_input_named() -> None:
    config = dict(CONFIG, input=[{"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]}])

    with pytest.raises(UnsupportedModelError, match="input TEXT has type TYPE_STRING"):
        signature_from_config(config)


@pytest.mark.triton
def test_requests_counted_in_a_window_are_exactly_those_triton_served(start_triton: Callable[..., TritonServer]) -> None:
    server = start_triton(models=["small"])
    control = ServerControl(server.http_address)
    loadgen = LoadGenerator(server.http_address, signature_from_config(control.config("small")))

    window = loadgen.run(batch_size=2, concurrency=3, duration_seconds=0.5)

    stats = requests.get(f"{server.http_url}/v2/models/small/stats", timeout=5).json()["model_stats"][0]
    assert window.error_count == 0 and window.success_count > 10
    assert int(stats["inference_stats"]["success"]["count"]) == window.success_count
    assert int(stats["inference_count"]) == 2 * window.success_count
    assert window.elapsed_seconds >= 0.5  # the window lasts at least as long as asked


@pytest.mark.triton
def test_requests_triton_refuses_are_counted_as_errors_with_its_reason(start_triton: Callable[..., TritonServer]) -> None:
    server = start_triton(models=["small"])
    wrong_shape = ModelSignature("small", 8, (InputSpec("INPUT0", "FP32", (3,)),))

    window = LoadGenerator(server.http_address, wrong_shape).run(batch_size=1, concurrency=2, duration_seconds=0.3)

    assert window.success_count == 0 and window.error_count == 2
    assert window.error_messages[0].startswith("400 Bad Request:")
    assert "unexpected shape for input 'INPUT0'" in window.error_messages[0]


def test_a_server_that_is_not_there_gives_errors_not_an_exception() -> None:
    address = f"127.0.0.1:{free_port()}"
    signature = signature_from_config(CONFIG)

    window = LoadGenerator(address, signature).run(batch_size=1, concurrency=2, duration_seconds=0.2)

    assert window.success_count == 0 and window.error_count == 2
    assert window.error_messages[0].startswith(f"cannot connect to {address}")


@pytest.mark.triton
def test_a_fixed_rate_is_served_as_offered_below_saturation_and_dropped_not_piled_up_above(
    start_triton: Callable[..., TritonServer]
) -> None:
    server = start_triton(models=["small"])
    control = ServerControl(server.http_address)
    loadgen = LoadGenerator(server.http_address, signature_from_config(control.config("small")))

    for rate in (20.0, 60.0):
        window = loadgen.run_at_rate(batch_size=1, rate_per_second=rate, duration_seconds=1.0)
        achieved = window.success_count / window.elapsed_seconds
        assert window.error_count == 0 and window.dropped_count == 0
        assert (window.concurrency, window.request_rate_per_second) == (None, rate)
        assert 0.6 * rate < achieved <= 1.1 * rate  # loose: the machine is shared

    # Far past what two requests in flight can serve: sends are dropped, none is left waiting.
    before = int(requests.get(f"{server.http_url}/v2/models/small/stats", timeout=5).json()
                 ["model_stats"][0]["inference_stats"]["success"]["count"])
    window = loadgen.run_at_rate(1, 100_000.0, 0.3, max_in_flight=2)
    stats = requests.get(f"{server.http_url}/v2/models/small/stats", timeout=5).json()["model_stats"][0]
    assert window.dropped_count > 0 and window.success_count + window.dropped_count == 30_000
    assert int(stats["inference_stats"]["success"]["count"]) - before == window.success_count
