"""A real HAProxy in front of real Triton servers, for tests and benchmarks: configuration rendered
for the servers given, on free loopback ports, started, and stopped on exit."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Collection, Iterator, Sequence

from gpupack.router.haproxy_config import render_config
from gpupack.router.launcher import HaproxyProcess, HaproxyStartError
from gpupack.servers import ServerConfig
from gpupack.triton.launcher import free_port

_FRESH_PORT_ATTEMPTS = 3


@contextlib.contextmanager
def haproxy_in_front(servers: Sequence[ServerConfig], models: Sequence[str], placed: Collection[tuple[str, str]],
                     directory: str | Path, *, admin_over_tcp: bool = False) -> Iterator[HaproxyProcess]:
    """A started HAProxy routing ``models`` over ``servers``, ``placed`` pairs serving, on a free
    loopback port; its configuration and log are written in ``directory``. The unix admin socket
    lives in a short temporary folder of its own (a socket path may not exceed 107 bytes)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    socket_dir = tempfile.mkdtemp(prefix="haproxy-")
    try:
        for attempt in range(_FRESH_PORT_ATTEMPTS):
            admin = f"127.0.0.1:{free_port()}" if admin_over_tcp else str(Path(socket_dir) / "admin.sock")
            port = free_port()
            config_path = directory / "haproxy.cfg"
            config_path.write_text(render_config(servers, models, placed, listen=f"127.0.0.1:{port}",
                                                 admin_socket=admin))
            proxy = HaproxyProcess(config_path, admin, f"http://127.0.0.1:{port}")
            try:
                proxy.start()
                break
            except HaproxyStartError:
                # another process bound a port between free_port() and haproxy's bind: fresh ports
                if attempt + 1 == _FRESH_PORT_ATTEMPTS or "cannot bind" not in proxy.log_tail():
                    raise
        with proxy:
            yield proxy
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
