"""What every measuring command shares: the server under test (named, or started here over a model
repository), the probe that reads its peaks, and stopping cleanly on SIGINT, SIGTERM or SIGHUP.

`gpupack profile`, `profile --colocate` and `gpupack verify` all measure this way, so a stopped run
of any of them unloads what it loaded and exits 128 + the signal.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from gpupack.addresses import host_and_port, network_address
from gpupack.errors import InputError
from gpupack.measurement.host import HostSource, find_listening_pid
from gpupack.measurement.nvml import NvmlSource
from gpupack.profiler.sampler import HostProbe, NvmlProbe, Probe
from gpupack.profiler.target import Target
from gpupack.servers import ServerConfig

_SERVER_NAME = "profile"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def default_backend() -> str:
    return "nvml" if Path("/proc/driver/nvidia/version").exists() else "host"

class Stop:
    """Which stop signal ended the run, for its exit status (128 + the signal, as a shell reports it)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signal).name if self.signal is not None else None

    @property
    def exit_status(self) -> int:
        return 128 + (self.signal or signal.SIGINT)

@contextlib.contextmanager
def stopped_by_signals() -> Iterator[Stop]:
    """SIGTERM and SIGHUP stop the run as Ctrl-C does; once one has, the others wait for the clean-up."""
    stop = Stop()

    def handle(signum: int, frame: object) -> None:
        if stop.signal is not None:
            return
        stop.signal = signum
        raise KeyboardInterrupt

    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        if previous[signum] is not signal.SIG_IGN:  # a background job's ignored Ctrl-C stays ignored
            signal.signal(signum, handle)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

@contextlib.contextmanager
def server_under_test(target: Target) -> Iterator[tuple[str, int | None]]:
    """(host:port, pid or None) of the server to profile; one started here is stopped on the way out."""
    if target.server is not None:
        address = network_address(target.server.url)
        _, port = host_and_port(address)
        yield address, target.server.pid or (find_listening_pid(port) if port else None)
        return
    from gpupack.triton.launcher import TritonServer  # noqa: PLC0415 - only when we start one

    assert target.repository is not None
    log_path = Path(tempfile.mkstemp(prefix="gpupack-profile-tritonserver-", suffix=".log")[1])
    with TritonServer(target.repository, name=_SERVER_NAME, log_path=log_path).start() as server:
        print(f"started tritonserver (pid {server.pid}, log {log_path})", file=sys.stderr)
        yield server.http_address, server.pid

def probe_factory(backend: str, address: str, pid: int | None, others: frozenset[str]) -> Callable[[], Probe]:
    server = ServerConfig(name=_SERVER_NAME, url=f"http://{address}", pid=pid)
    if backend == "host":
        if pid is None:
            raise InputError(f"--backend host needs the server on this machine; nothing here listens on {address}")
        return lambda: HostProbe(HostSource(server), others)
    nvml = NvmlSource()
    return lambda: NvmlProbe(nvml, HostSource(server) if pid is not None else None, others)
