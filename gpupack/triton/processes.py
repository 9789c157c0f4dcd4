"""Which OS process serves which Triton model.

Backends that run models out of process (the Python backend's ``triton_python_backend_stub``)
start one child of ``tritonserver`` per model instance, and its command line names the model file:
``<stub> <repo>/<model>/<version>/model.py <shm-region> ... <instance-name> ...``. That is the
most direct per-model measurement there is, on GPUs (NVML lists the stub's PID) and on CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterable, Sequence

import psutil

STUB_EXECUTABLE = "triton_python_backend_stub"


@dataclass(frozen=True)
class BackendProcess:
    pid: int
    model: str
    version: str
    instance: str


def parse_stub_cmdline(cmdline: Sequence[str], pid: int = 0) -> BackendProcess | None:
    """Identify a Python-backend stub from its argv, or None if it is not one."""
    if len(cmdline) < 2 or PurePosixPath(cmdline[0]).name != STUB_EXECUTABLE:
        return None
    model_file = PurePosixPath(cmdline[1])
    if len(model_file.parts) < 3:
        return None
    version, model = model_file.parts[-2], model_file.parts[-3]
    # argv[-2] is the instance name "<model>_<group>_<index>" in every stub release we know of.
    instance = cmdline[-2] if len(cmdline) >= 4 else model
    return BackendProcess(pid=pid, model=model, version=version, instance=instance)


def backend_processes(server_pid: int, children: Iterable[psutil.Process] | None = None) -> list[BackendProcess]:
    """All model backend processes under one tritonserver, skipping ones that vanish meanwhile.

    Pass ``children`` when the caller already listed the tree: listing it scans all of /proc.
    """
    if children is None:
        try:
            children = psutil.Process(server_pid).children(recursive=True)
        except psutil.Error:
            return []
    found = []
    for child in children:
        try:
            identity = parse_stub_cmdline(child.cmdline(), child.pid)
        except psutil.Error:
            continue
        if identity is not None:
            found.append(identity)
    return found
