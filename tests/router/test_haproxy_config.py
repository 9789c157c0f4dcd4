"""The configuration HAProxy runs, and its runtime API, without Triton: what ``haproxy -c``
accepts, and how a change it refuses or a socket that does not answer reach the caller."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gpupack.errors import InputError, UnreachableError
from gpupack.router import OFF, SERVING, RouterError, backend_name
from gpupack.router.haproxy import HaproxyRouter
from gpupack.router.haproxy_config import render_config
from gpupack.router.launcher import find_haproxy
from gpupack.servers import ServerConfig, TlsConfig
from gpupack.testing import haproxy_in_front

SERVERS = [ServerConfig("triton-0", "http://127.0.0.1:18000"), ServerConfig("triton-1", "http://10.0.0.7:8000")]


def haproxy_check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return subprocess.run([find_haproxy(), "-c", "-f", str(path)], capture_output=True, text=True, check=False)


def test_the_configuration_passes_haproxys_own_check(tmp_path: Path) -> None:
    text = render_config(SERVERS, ["small", "resnet_50 v2"], {("small", "triton-0")}, listen="0.0.0.0:8080",
                         admin_socket=str(tmp_path / "admin.sock"))
    checked = haproxy_check(tmp_path, text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout + checked.stderr


def test_every_pair_is_declared_and_only_placed_ones_serve() -> None:
    text = render_config(SERVERS, ["small", "large"], {("small", "triton-0"), ("large", "triton-1")},
                         admin_socket="/run/haproxy/admin.sock")
    entries = [line.split() for line in text.splitlines() if line.strip().startswith("server ")]
    # any_server, then one backend per model: every server in each
    assert [(entry[1], "disabled" in entry) for entry in entries] == [
        ("triton-0", False), ("triton-1", False),
        ("triton-0", False), ("triton-1", True),
        ("triton-0", True), ("triton-1", False),
    ]
    assert "    use_backend model_small if { path /v2/models/small } || { path_beg /v2/models/small/ }" in text
    assert "http-check send meth GET uri /v2/models/large/ready ver HTTP/1.1 hdr Host localhost" in text
    assert "http-check send meth GET uri /v2/health/ready ver HTTP/1.1 hdr Host localhost" in text
    assert "stats socket /run/haproxy/admin.sock mode 600 level admin" in text


def test_a_model_name_with_odd_characters_is_matched_as_clients_encode_it() -> None:
    text = render_config(SERVERS, ["resnet 50/v2"], set(), admin_socket="/run/admin.sock")
    assert f"use_backend {backend_name('resnet 50/v2')} if {{ path /v2/models/resnet%2050%2Fv2 }}" in text


def test_the_runtime_api_over_tcp_listens_on_loopback_only(tmp_path: Path) -> None:
    text = render_config(SERVERS, ["small"], set(), admin_socket="127.0.0.1:9999")
    assert "stats socket ipv4@127.0.0.1:9999 level admin" in text
    assert haproxy_check(tmp_path, text).returncode == 0
    with pytest.raises(InputError, match="no authentication"):
        render_config(SERVERS, ["small"], set(), admin_socket="0.0.0.0:9999")


@pytest.mark.parametrize(("server", "words"), [
    (ServerConfig("triton 0", "http://127.0.0.1:8000"), "letters, digits"),
    (ServerConfig("g", "127.0.0.1:8001", protocol="grpc"), "HTTP endpoint"),
    (ServerConfig("t", "https://127.0.0.1:8000", tls=TlsConfig(insecure=True)), "tls or headers"),
])
def test_a_server_the_router_cannot_front_is_refused(server: ServerConfig, words: str) -> None:
    with pytest.raises(InputError, match=words):
        render_config([server], ["small"], set(), admin_socket="/run/admin.sock")


def test_a_placement_naming_an_unknown_server_is_refused() -> None:
    with pytest.raises(InputError, match="small on triton-9"):
        render_config(SERVERS, ["small"], {("small", "triton-9")}, admin_socket="/run/admin.sock")


def test_an_admin_socket_nobody_listens_on_is_unreachable(tmp_path: Path) -> None:
    router = HaproxyRouter(str(tmp_path / "admin.sock"))
    with pytest.raises(UnreachableError) as caught:
        router.status("small", "triton-0")
    assert str(caught.value) == f"cannot reach the router at {tmp_path / 'admin.sock'}: no such file or directory"


def test_changes_apply_over_the_runtime_api_and_unknown_names_are_refused(tmp_path: Path) -> None:
    # No Triton behind it: the entries' checks fail, which the admin state does not depend on.
    with haproxy_in_front(SERVERS[:1], ["small"], set(), tmp_path, admin_over_tcp=True) as proxy:
        router = proxy.router()
        assert router.describe() == f"HAProxy at {proxy.admin_socket}"
        assert router.status("small", "triton-0").state == OFF
        router.enable("small", "triton-0", 7)
        status = router.status("small", "triton-0")
        assert (status.state, status.weight, status.up) == (SERVING, 7, False)
        with pytest.raises(RouterError, match="No such backend"):
            router.drain("unknown-model", "triton-0")
        with pytest.raises(RouterError, match="No such server"):
            router.disable("small", "triton-9")
        with pytest.raises(RouterError, match="1 to 256"):
            router.set_weight("small", "triton-0", 0)
