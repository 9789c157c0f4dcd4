"""Ground truth for peaks: the highest memory each model's own backend processes reached.

The kernel keeps a process's resident high-water mark (``VmHWM`` in ``/proc/<pid>/status``): exact
for a model whose stub is its only process, whatever the sampling rate. It is gone once the stub
exits, so :class:`BackendWatch` polls the server's backend processes while they live and keeps,
per model, the highest sum over its processes: VmHWM on the host, NVML's per-process memory on a
GPU (see :mod:`gpupack.testing.gpu_check`).
"""

from __future__ import annotations

import threading
from typing import Callable

from gpupack.triton.processes import backend_processes


def vmhwm_bytes(pid: int) -> int | None:
    """The process's peak resident set, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class BackendWatch:
    """Between ``start()`` and ``stop()``, ``highest[model]`` is the highest sum of ``read(pid)``
    over that model's backend processes (bytes)."""

    def __init__(self, server_pid: int, read: Callable[[int], int | None] = vmhwm_bytes,
                 interval_seconds: float = 0.1) -> None:
        self._server_pid = server_pid
        self._read = read
        self._interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpupack-backend-watch", daemon=True)
        self.highest: dict[str, int] = {}
        self.pids: dict[str, set[int]] = {}

    def start(self) -> "BackendWatch":
        self._poll()
        self._thread.start()
        return self

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.highest

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_seconds):
            self._poll()

    def _poll(self) -> None:
        totals: dict[str, int] = {}
        for process in backend_processes(self._server_pid):
            value = self._read(process.pid)
            if value is not None:
                totals[process.model] = totals.get(process.model, 0) + value
                self.pids.setdefault(process.model, set()).add(process.pid)
        for model, total in totals.items():
            self.highest[model] = max(self.highest.get(model, 0), total)

    def __enter__(self) -> "BackendWatch":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
