"""Start a real ``haproxy`` on a configuration file, for the demo, tests and benchmarks.

HAProxy runs in the foreground (``-db``) in its own process group, tied to the process that started
it as ``tritonserver`` is (``die_with_parent``): a run killed mid-way leaves no router behind.
Start it from a thread that outlives it (the main thread), for the same reason as Triton.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from gpupack.errors import GpupackError, UnreachableError
from gpupack.router.haproxy import HaproxyRouter
from gpupack.timing import WaitTimeout, wait_until
from gpupack.triton.launcher import die_with_parent

DEFAULT_BINARY = "/usr/sbin/haproxy"


class HaproxyStartError(GpupackError):
    pass


def find_haproxy() -> str:
    """``$HAPROXY``, else ``haproxy`` on PATH, else Debian's ``/usr/sbin/haproxy``."""
    binary = os.environ.get("HAPROXY") or shutil.which("haproxy") or DEFAULT_BINARY
    if not Path(binary).is_file():
        raise HaproxyStartError(f"no haproxy at {binary}: install Debian's haproxy (2.6) or set HAPROXY")
    return binary


class HaproxyProcess:
    """One haproxy on a configuration file; ready once its admin socket answers."""

    def __init__(self, config_path: str | Path, admin_socket: str, url: str, *, binary: str | None = None,
                 log_path: str | Path | None = None) -> None:
        self.config_path = Path(config_path)
        self.admin_socket = admin_socket
        self.url = url  # where clients send requests: http://HOST:PORT
        self.binary = binary or find_haproxy()
        self.log_path = Path(log_path) if log_path else self.config_path.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    def router(self) -> HaproxyRouter:
        return HaproxyRouter(self.admin_socket)

    def start(self, timeout_seconds: float = 20.0) -> HaproxyProcess:
        parent_pid = os.getpid()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv
                [self.binary, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: die_with_parent(parent_pid),  # noqa: PLW1509 - needed for PDEATHSIG
            )
        try:
            wait_until(self._answers, timeout_seconds, "haproxy's admin socket answering", interval_seconds=0.05)
        except WaitTimeout as e:
            self.stop()
            raise HaproxyStartError(f"haproxy did not answer on {self.admin_socket} within {timeout_seconds:g} s:\n"
                                    f"{self.log_tail()}") from e
        return self

    def _answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise HaproxyStartError(f"haproxy exited during start-up:\n{self.log_tail()}")
        try:
            return "Name: HAProxy" in self.router().command("show info")
        except UnreachableError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace_seconds: float = 5.0) -> None:
        """SIGTERM (HAProxy's hard stop), then SIGKILL, to its whole process group."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def __enter__(self) -> HaproxyProcess:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
