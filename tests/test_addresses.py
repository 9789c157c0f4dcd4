"""Server addresses read one way everywhere: with or without a scheme, IPv6 in brackets."""

from __future__ import annotations

import pytest

from gpupack.addresses import host_and_port, http_client_address, network_address


@pytest.mark.parametrize(("address", "expected"), [
    ("http://127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("triton-0:8001", ("triton-0", 8001)),
    ("[::1]:8000", ("::1", 8000)),
    ("https://[fe80::1]/", ("fe80::1", None)),
    (":9478", ("", 9478)),
    ("localhost", ("localhost", None)),
])
def test_host_and_port_with_or_without_a_scheme(address: str, expected: tuple[str, int | None]) -> None:
    assert host_and_port(address) == expected


def test_a_port_that_is_not_one_is_an_error() -> None:
    with pytest.raises(ValueError):
        host_and_port("host:http")


def test_a_url_without_a_port_connects_to_its_schemes() -> None:
    assert network_address("http://triton") == "triton:80"
    assert network_address("https://triton") == "triton:443"
    assert network_address("http://[::1]:8000/") == "[::1]:8000"
    assert network_address("triton:8000") == "triton:8000"


def test_tritonclient_gets_the_path_prefix_and_tls_of_a_url() -> None:
    assert http_client_address("https://proxy/triton-0/") == ("proxy:443/triton-0", True)
    assert http_client_address("http://127.0.0.1:8000") == ("127.0.0.1:8000", False)
