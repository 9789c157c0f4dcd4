"""CPU-only Triton servers, measured with psutil: one device ``cpu:<server>`` per server.

Memory is the resident set of the server's process tree (``tritonserver`` plus backend stubs),
CPU time its utilisation. Discovering the tree scans all of ``/proc``, so it is refreshed on a
slower beat than the samples; reading a known process's RSS and CPU time is one small read
(:mod:`procfs`). psutil finds the listening server and the machine's memory and cores.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import psutil

from gpupack.devices import cpu_device_name
from gpupack.measurement import SourceError
from gpupack.servers import ServerConfig
from gpupack.measurement.procfs import ProcStat, descendants, read_cmdline, read_stat
from gpupack.triton.processes import BackendProcess, parse_stub_cmdline

TREE_REFRESH_SECONDS = 1.0
_CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    pid: int
    rss_bytes: int
    cpu_seconds: float


@dataclass(frozen=True)
class HostReading:
    """One look at one server's process tree."""

    server: str
    device: str
    server_pid: int
    capacity_bytes: int
    cores: float
    taken_at_seconds: float
    processes: Mapping[int, ProcessUsage]
    backends: tuple[BackendProcess, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def tree_rss_bytes(self) -> int:
        return sum(p.rss_bytes for p in self.processes.values())

    @property
    def tree_cpu_seconds(self) -> float:
        return sum(p.cpu_seconds for p in self.processes.values())


def find_listening_pid(port: int) -> int | None:
    """The tritonserver process that listens on ``port``, or None."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                if "tritonserver" in psutil.Process(conn.pid).name():
                    return conn.pid
            except psutil.Error:
                continue
    return None


def cgroup_memory_limit_bytes(pid: int) -> int | None:
    """The tightest memory limit of the cgroups (v2, or v1 memory controller) holding ``pid``."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates = [(_CGROUP_ROOT / path.lstrip("/"), "memory.max")]
        elif "memory" in controllers.split(","):
            candidates = [(_CGROUP_ROOT / "memory" / path.lstrip("/"), "memory.limit_in_bytes")]
        else:
            continue
        for directory, name in candidates:
            while True:
                limit = _read_limit(directory / name)
                if limit is not None:
                    limits.append(limit)
                if directory in (_CGROUP_ROOT, _CGROUP_ROOT / "memory") or directory == directory.parent:
                    break
                directory = directory.parent
    # cgroup v1 reports "no limit" as a huge page-aligned number.
    limits = [limit for limit in limits if limit < 2**62]
    return min(limits) if limits else None


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cores(pid: int) -> float:
    try:
        return float(len(os.sched_getaffinity(pid)))
    except OSError:
        return float(psutil.cpu_count() or 1)


class HostSource:
    """Reads one local server's process tree. Collaborators are passed in for tests."""

    def __init__(
        self,
        server: ServerConfig,
        *,
        find_pid: Callable[[int], int | None] = find_listening_pid,
        memory_limit: Callable[[int], int | None] = cgroup_memory_limit_bytes,
        host_memory_bytes: Callable[[], int] = lambda: psutil.virtual_memory().total,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self._find_pid = find_pid
        self._memory_limit = memory_limit
        self._host_memory_bytes = host_memory_bytes
        self._clock = clock
        self._root: ProcStat | None = None
        self._tree: dict[int, int] = {}  # child PID -> its start time, in ticks since boot
        self._identities: dict[tuple[int, int], BackendProcess] = {}  # (PID, start) of each stub
        self._backends: tuple[BackendProcess, ...] = ()
        self._capacity_bytes = 0
        self._cores = 1.0
        self._tree_read_at = float("-inf")
        self._pid_searched_at = float("-inf")
        self._configured_pid_gone = False  # then a restarted server is looked up by its port

    def read(self) -> HostReading:
        now = self._clock()
        root = self._root_stat()
        stats: Sequence[ProcStat | None]
        if now - self._tree_read_at >= TREE_REFRESH_SECONDS:
            stats = self._refresh_tree(root)
            self._tree_read_at = now
        else:
            stats = [read_stat(pid) for pid in self._tree]
        processes = {root.pid: ProcessUsage(root.pid, root.rss_bytes, root.cpu_seconds)}
        for pid, stat in zip(list(self._tree), stats):
            # A PID that now names another process (it started at another time) is a stub that is gone.
            if stat is None or stat.start_ticks != self._tree[pid]:
                del self._tree[pid]
                continue
            processes[pid] = ProcessUsage(pid, stat.rss_bytes, stat.cpu_seconds)
        alive = tuple(b for b in self._backends if b.pid in processes)
        return HostReading(
            server=self.server.name,
            device=cpu_device_name(self.server.name),
            server_pid=root.pid,
            capacity_bytes=self._capacity_bytes,
            cores=self._cores,
            taken_at_seconds=now,
            processes=processes,
            backends=alive,
        )

    def _root_stat(self) -> ProcStat:
        if self._root is not None:
            stat = read_stat(self._root.pid)
            if stat is not None and stat.start_ticks == self._root.start_ticks:
                return stat
            gone, self._root = self._root.pid, None
            self._configured_pid_gone |= gone == self.server.pid
            raise SourceError(f"server {self.server.name}: tritonserver (pid {gone}) is gone")
        pid = None if self._configured_pid_gone else self.server.pid
        if pid is None:
            # Looking for the listener lists every socket on the machine: not on every sample.
            now = self._clock()
            if now - self._pid_searched_at < TREE_REFRESH_SECONDS:
                raise SourceError(f"server {self.server.name}: no tritonserver found yet")
            self._pid_searched_at = now
            port = self.server.port
            pid = self._find_pid(port) if port else None
        if pid is None:
            raise SourceError(f"server {self.server.name}: no tritonserver listening on port {self.server.port}")
        stat = read_stat(pid)
        if stat is None:
            raise SourceError(f"server {self.server.name}: process {pid} is not running")
        self._root = stat
        self._tree = {}
        self._tree_read_at = float("-inf")
        return stat

    def _refresh_tree(self, root: ProcStat) -> Sequence[ProcStat]:
        """Re-list the tree; returns the children's fresh stats, in the order of ``self._tree``."""
        children = descendants(root.pid)
        self._tree = {child.pid: child.start_ticks for child in children}
        # A stub's command line does not change once it is one, so only new processes are parsed.
        # Others are read again: a child between fork and exec still shows the server's.
        known, self._identities = self._identities, {}
        for child in children:
            key = (child.pid, child.start_ticks)
            identity = known.get(key) or parse_stub_cmdline(read_cmdline(child.pid), child.pid)
            if identity is not None:
                self._identities[key] = identity
        self._backends = tuple(self._identities.values())
        limit = self._memory_limit(root.pid)
        self._capacity_bytes = limit or self.server.memory_budget_bytes or self._host_memory_bytes()
        self._cores = _cores(root.pid)
        return children
