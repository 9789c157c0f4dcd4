"""Per-process readings straight from ``/proc/<pid>/stat``: the host source's hot path.

psutil reads two files per process for RSS and CPU time (``statm`` and ``stat``), checks process
identity by reading ``stat`` again, and finds children by building a parent map of every process
on the machine through its own Process objects. At 5 samples a second over a server's ~50 backend
stubs that was most of the exporter's CPU. One ``stat`` read carries all we need: parent, start
time (which tells a reused PID from the process we knew), resident pages and CPU ticks.
"""

from __future__ import annotations

import os
from typing import NamedTuple

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


class ProcStat(NamedTuple):
    pid: int
    ppid: int
    start_ticks: int  # since boot; with the PID, identifies the process
    rss_bytes: int
    cpu_seconds: float  # user + system


def read_stat(pid: int) -> ProcStat | None:
    """The process's stat line, or None if it is gone (or not readable).

    A zombie is gone: it has exited and holds no memory, but keeps its PID and start time until
    its parent reaps it, so reading it as alive would report a killed server's memory as 0.
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name (field 2) is in parentheses and may itself hold spaces or parentheses.
    fields = data[data.rfind(b")") + 2:].split()
    if len(fields) < 22 or fields[0] in (b"Z", b"X"):
        return None
    return ProcStat(pid, int(fields[1]), int(fields[19]), int(fields[21]) * _PAGE_BYTES,
                    (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND)


def descendants(root_pid: int) -> list[ProcStat]:
    """Every process below ``root_pid`` (not the root itself), from one pass over ``/proc``."""
    children: dict[int, list[ProcStat]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                children.setdefault(stat.ppid, []).append(stat)
    found, parents = [], [root_pid]
    while parents:
        for child in children.get(parents.pop(), ()):
            found.append(child)
            parents.append(child.pid)
    return found


def read_cmdline(pid: int) -> list[str]:
    """argv of the process; empty if it is gone or a kernel thread."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.rstrip(b"\0").split(b"\0")] if raw else []
