"""The router setting, from the config file or --router: a bad value names its file, line and
field, and nothing else is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupack.config import ConfigFile, load_config_file
from gpupack.errors import InputError
from gpupack.router.haproxy import HaproxyRouter
from gpupack.router.settings import RouterSettings, router_from_settings, router_settings


def config(tmp_path: Path, text: str) -> ConfigFile:
    path = tmp_path / "gpupack.yaml"
    path.write_text(text)
    return load_config_file(path)


def test_the_router_section_gives_where_clients_connect_and_where_gpupack_drives(tmp_path: Path) -> None:
    file = config(tmp_path, "rules: {}\nrouter:\n  kind: haproxy\n  listen: 0.0.0.0:9000\n"
                            "  admin_socket: /run/gpupack/haproxy.sock\n")
    assert router_settings(file) == RouterSettings("haproxy", "0.0.0.0:9000", "/run/gpupack/haproxy.sock")
    router = router_from_settings(file, None)
    assert isinstance(router, HaproxyRouter) and router.describe() == "HAProxy at /run/gpupack/haproxy.sock"


def test_the_flag_wins_over_the_file_and_takes_the_runtime_api_over_tcp(tmp_path: Path) -> None:
    file = config(tmp_path, "router:\n  admin_socket: /run/gpupack/haproxy.sock\n")
    over_tcp, over_socket = router_from_settings(file, "haproxy:127.0.0.1:9999"), \
        router_from_settings(None, "haproxy:/tmp/admin.sock")
    assert over_tcp is not None and over_tcp.describe() == "HAProxy at 127.0.0.1:9999"
    assert over_socket is not None and over_socket.describe() == "HAProxy at /tmp/admin.sock"


def test_without_a_router_section_or_flag_there_is_no_router(tmp_path: Path) -> None:
    assert router_from_settings(None, None) is None
    assert router_from_settings(config(tmp_path, "rules: {}\n"), None) is None
    assert router_settings(None) == RouterSettings("haproxy", "0.0.0.0:8080", "/run/haproxy/admin.sock")


@pytest.mark.parametrize(("text", "message"), [
    ("router:\n  kind: nginx\n", ":2: router.kind: 'nginx' is not a router gpupack drives (known: haproxy)"),
    ("router:\n  kind: haproxy\n  listen: 8080\n", ":3: router.listen: '8080' is not HOST:PORT"),
    ("router:\n  admin_socket: 0.0.0.0:9999\n", ":2: router.admin_socket: 0.0.0.0:9999: the runtime API has no "
                                                "authentication"),
    ("router:\n  admin_socket: ''\n", ":2: router.admin_socket: must be the path of HAProxy's admin socket"),
    ("router:\n  kind: haproxy\n  socket: /x\n", ":3: router.socket: unknown setting (known: admin_socket, kind, "
                                                 "listen)"),
    ("router: haproxy\n", ":1: router: must be a mapping"),
])
def test_a_bad_router_section_names_its_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        router_from_settings(config(tmp_path, text), None)
    assert str(caught.value).startswith(f"{tmp_path / 'gpupack.yaml'}{message}")


@pytest.mark.parametrize("flag", ["nginx:/tmp/admin.sock", "haproxy", "haproxy:", "/tmp/admin.sock"])
def test_a_bad_router_flag_says_what_it_takes(flag: str) -> None:
    with pytest.raises(InputError, match=r"^--router: .* is not haproxy:PATH"):
        router_from_settings(None, flag)


def test_a_flag_with_a_public_runtime_api_is_refused() -> None:
    with pytest.raises(InputError, match="^--router: 10.0.0.5:9999: the runtime API has no auth"):
        router_from_settings(None, "haproxy:10.0.0.5:9999")
