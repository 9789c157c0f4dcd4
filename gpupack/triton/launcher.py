"""Start real ``tritonserver`` processes for tests, benchmarks and the demo.

The binary comes from ``$TRITONSERVER``, from ``PATH`` or from the ``nvidia-pytriton`` wheel, which
ships a complete Triton 2.x with the Python backend but without the stub in place: we lay out a
backend directory whose ``python/`` holds the stub built for this interpreter.

Every server runs in its own process group and is tied to the process that started it
(``PR_SET_PDEATHSIG``), so a test run that is killed mid-way leaves nothing behind: the server dies
with its parent, and the Python-backend stubs notice their server is gone and exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import requests

from gpupack.errors import GpupackError, TritonNotFoundError
from gpupack.servers import ServerConfig
from gpupack.timing import Deadline, WaitTimeout, wait_until
from gpupack.triton.control import TritonControl

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TritonInstallation:
    binary: Path
    backend_directory: Path
    library_path: tuple[Path, ...] = ()

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        if self.library_path:
            extra = ":".join(str(p) for p in self.library_path)
            env["LD_LIBRARY_PATH"] = f"{env['LD_LIBRARY_PATH']}:{extra}" if env.get("LD_LIBRARY_PATH") else extra
        # The stub embeds libpython and finds its site-packages through the first python3 on PATH:
        # put this interpreter's there so models see the same numpy as we do.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env


class TritonStartError(GpupackError):
    pass


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpupack"


def _from_pytriton() -> TritonInstallation | None:
    # find_spec, not import: importing pytriton pulls in its whole client stack.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.origin:
        return None
    package_dir = Path(spec.origin).parent
    dist = package_dir / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not binary.exists() or not stub.exists():
        return None
    dist_id = hashlib.sha256(str(dist.resolve()).encode()).hexdigest()[:12]
    backends = _cache_dir() / f"triton-backends-{dist_id}-py{version}"
    if not (backends / "python" / "triton_python_backend_stub").exists():
        backends.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="backends-", dir=backends.parent))
        shutil.copytree(dist / "backends", staging / "backends", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, staging / "backends" / "python" / "triton_python_backend_stub")
        with contextlib.suppress(OSError):  # another process won the race: use theirs
            os.replace(staging / "backends", backends)
        shutil.rmtree(staging, ignore_errors=True)
    libs = package_dir.parent / "nvidia_pytriton.libs"
    return TritonInstallation(binary, backends, (libs,) if libs.exists() else ())


def find_tritonserver(env: Mapping[str, str] | None = None) -> TritonInstallation:
    """Locate a runnable Triton: ``$TRITONSERVER``, then ``PATH``, then the nvidia-pytriton wheel."""
    env = os.environ if env is None else env
    explicit = env.get("TRITONSERVER")
    if explicit:
        binary = Path(explicit)
        if not binary.is_file():
            raise TritonNotFoundError(f"TRITONSERVER={explicit} is not a file")
        return TritonInstallation(binary, binary.resolve().parent.parent / "backends")
    on_path = shutil.which("tritonserver", path=env.get("PATH"))
    if on_path:
        return TritonInstallation(Path(on_path), Path(on_path).resolve().parent.parent / "backends")
    installation = _from_pytriton()
    if installation is None:
        raise TritonNotFoundError(
            "no tritonserver found: set TRITONSERVER, put it on PATH, or pip install 'gpupack[server]'"
        )
    return installation


_PORT_TAKEN = "already in use"
_FRESH_PORT_ATTEMPTS = 3
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A loopback port nobody listens on, chosen below the kernel's ephemeral range: a port the
    kernel hands out for outgoing connections can be taken by any client between our check and the
    server's bind, which lost races in CI. Falls back to an ephemeral port if none is free below."""
    low, _ = _ephemeral_range()
    candidates = list(range(max(1024, low - 12000), low))
    random.shuffle(candidates)
    with _handed_out_lock:
        for port in candidates[:200]:
            if port not in _handed_out and _ports_free(port):
                _handed_out.add(port)  # a port handed out is not bound yet: never hand it out twice
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no obstacle
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec (``preexec_fn``): the child gets SIGKILL when its
    parent dies, even by ``kill -9``, which no clean-up handler can catch."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _prepare_child(parent_pid: int, cpus: frozenset[int]) -> None:
    """``preexec_fn`` of a server: tied to its parent, and held to its CPU budget. The affinity is
    inherited by the backend stubs it forks, so the models' work shares those cores only."""
    die_with_parent(parent_pid)
    if cpus:
        os.sched_setaffinity(0, cpus)


class TritonServer:
    """One real tritonserver on loopback, in explicit model-control mode.

    PR_SET_PDEATHSIG fires when the *thread* that started the server exits, so start servers
    from a thread that outlives them (the main thread, in tests and the demo).

    ``cpus``: the cores the server and its models may run on (a CPU budget, as ``taskset -c``
    gives); empty, every core this process may use. CPU-only servers otherwise share all of the
    machine's cores, and models put together never queue for them as they would on one device.
    """

    def __init__(
        self,
        model_repository: str | Path,
        *,
        name: str = "triton",
        installation: TritonInstallation | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | Path | None = None,
        cpus: Iterable[int] = (),
    ) -> None:
        self.name = name
        self.cpus = frozenset(cpus)
        allowed = os.sched_getaffinity(0)
        if not self.cpus <= allowed:
            raise TritonStartError(f"server {name}: cores {sorted(self.cpus - allowed)} are not among those this "
                                   f"process may use ({', '.join(map(str, sorted(allowed)))})")
        self.model_repository = Path(model_repository).resolve()
        self.installation = installation or find_tritonserver()
        self.extra_args = tuple(extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen[bytes] | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self._fresh_ports = True
        self._log_file: object | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise TritonStartError(f"server {self.name} is not started")
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_address(self) -> str:
        """host:port, the form tritonclient wants."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def launch(self, *, same_ports: bool = False) -> "TritonServer":
        """Start the process without waiting; pair with :meth:`wait_ready`. ``same_ports``: reuse the
        ports of the previous launch (a restart), so clients configured with its URLs find it again."""
        self._fresh_ports = not (same_ports and self.http_port)
        if self._fresh_ports:
            self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix=f"tritonserver-{self.name}-", suffix=".log")[1])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.installation.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.installation.backend_directory}",
            "--model-control-mode=explicit",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false" if not _has_nvidia_driver() else "--allow-gpu-metrics=true",
            "--exit-timeout-secs=5",
            *self.extra_args,
        ]
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file = log_file
        parent_pid, cpus = os.getpid(), self.cpus
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=self.installation.environment(),
            start_new_session=True,
            preexec_fn=lambda: _prepare_child(parent_pid, cpus),  # noqa: PLW1509 - needed for PDEATHSIG
        )
        return self

    def wait_ready(self, timeout_seconds: float = 60.0) -> "TritonServer":
        """Until the server answers ready. A server that lost a race for a port it was given fresh
        (another process bound it between our check and Triton's bind) is relaunched on new ports."""
        attempts_left = _FRESH_PORT_ATTEMPTS

        def ready() -> bool:
            nonlocal attempts_left
            if self.process is None or self.process.poll() is not None:
                if self._fresh_ports and attempts_left > 1 and _PORT_TAKEN in self.log_tail(3):
                    attempts_left -= 1
                    self.stop()
                    self.launch()
                    return False
                raise TritonStartError(f"tritonserver {self.name} exited during start-up:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{self.http_url}/v2/health/ready", timeout=1).status_code == 200
            return False

        try:
            wait_until(ready, timeout_seconds, f"tritonserver {self.name} ready")
        except WaitTimeout as e:
            self.stop()
            raise TritonStartError(f"tritonserver {self.name} not ready after {timeout_seconds:.0f}s:\n"
                                   f"{self.log_tail()}") from e
        return self

    def start(self, timeout_seconds: float = 60.0) -> "TritonServer":
        return self.launch().wait_ready(timeout_seconds)

    def restart(self, timeout_seconds: float = 60.0) -> "TritonServer":
        """Stop (if still running), then start again on the same ports and wait until ready. Models
        come back unloaded (explicit model-control mode), as after a real restart; the PID is new."""
        self.stop()
        deadline = Deadline.after(timeout_seconds)
        try:
            wait_until(lambda: _ports_free(self.http_port, self.grpc_port, self.metrics_port), timeout_seconds,
                       f"tritonserver {self.name}'s ports freed", interval_seconds=0.05)
        except WaitTimeout as e:  # another process took a port meanwhile
            raise TritonStartError(f"tritonserver {self.name}: its ports are still taken after it stopped") from e
        return self.launch(same_ports=True).wait_ready(max(1.0, deadline.remaining()))

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_seconds: float = 5.0) -> None:
        """SIGTERM, then SIGKILL, to the whole process group: server and every backend stub."""
        if self.process is None:
            return
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    # -- model control, through the same door the scheduler and profiler use -------------------

    def control(self, timeout_seconds: float = 120.0) -> TritonControl:
        return TritonControl(ServerConfig(self.name, self.http_url), timeout_seconds)

    def load_model(self, model: str, config: Mapping | None = None, timeout_seconds: float = 120.0) -> None:
        """Raises :class:`~gpupack.triton.control.TritonControlError` with Triton's reason if it fails."""
        self.control(timeout_seconds).load(model, config)

    def unload_model(self, model: str, timeout_seconds: float = 60.0, wait: bool = True) -> None:
        """By default, returns once the model has left the index: callers measuring memory need it gone."""
        control = self.control(timeout_seconds)
        control.unload(model)
        if wait:
            control.wait_unloaded(model, timeout_seconds)

    def ready_models(self) -> list[str]:
        return sorted(self.control().ready_models())

    def __enter__(self) -> "TritonServer":
        return self if self.process is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _has_nvidia_driver() -> bool:
    return Path("/proc/driver/nvidia/version").exists()


@contextlib.contextmanager
def triton_fleet(
    model_repository: str | Path,
    names: Sequence[str],
    *,
    installation: TritonInstallation | None = None,
    log_dir: str | Path | None = None,
    timeout_seconds: float = 90.0,
) -> Iterator[list[TritonServer]]:
    """Several servers over one repository, started in parallel, always stopped together."""
    installation = installation or find_tritonserver()
    servers = [
        TritonServer(
            model_repository,
            name=name,
            installation=installation,
            log_path=Path(log_dir) / f"{name}.log" if log_dir else None,
        )
        for name in names
    ]
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready(timeout_seconds)
        yield servers
    finally:
        stoppers = [threading.Thread(target=server.stop) for server in servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
